"""Test tiers: which tests are slow, and why. tests/conftest.py applies these markers at collection.

    python -m pytest -q --durations=25 tests      # the full suite: every test (what .ci/run runs)
    python -m pytest -q -m "not slow" tests       # the quick tier: the edit loop, every module's main path
    python -m pytest -q -m "not browser" tests    # e.g. everything but the Chromium tests

Markers (registered in pyproject.toml): `browser` drives the web page in Chromium, `torch` runs PyTorch/diffusers from
.venv-torch, `multiproc` launches several training processes, `builds` builds a model world or an environment; each
of them implies `slow`. Plain `slow` marks tests that took 5 s or more in a full run, or 2 s or more in a quick-tier
run, on this project's 2-core machine (measured with --durations=0 while other test runs shared it; see the PKG note
of issue 25), except the main-path tests each module keeps in the quick tier (listed at the end; tests/test_tiers.py
checks that every test file keeps one, and that every name here exists).

Entries are `file` (every test in it) or `file::function` (every parameter of it).
"""

from __future__ import annotations

IMPLY_SLOW = ("browser", "torch", "multiproc", "builds")

BY_FILE = {
    "browser": ("test_webui_browser.py",),
    "torch": ("test_torch_interop.py", "test_parity_sd1.py"),
    "slow": ("test_bench.py",),  # a timed benchmark run (test_help.py keeps the benchmarks' --help quick)
}

BY_TEST = {
    "browser": (
        "test_security_webui.py::test_a_foreign_host_gets_403_for_page_api_and_files",
        "test_security_webui.py::test_the_browser_with_a_host_mapping_sees_no_page",
        "test_security_webui.py::test_no_refused_upload_remains_after_refusal_and_restart",
        "test_security_webui.py::test_with_a_login_every_route_without_it_is_refused",
    ),
    "torch": (
        "test_sdxl.py::test_webui_file_loads_in_diffusers_sdxl_and_encodes_as_ppdiffusers",
        "test_sdxl.py::test_step_parity_loss_and_both_gradients_match_the_diffusers_sdxl_computation",
        "test_world.py::test_converted_concept_draws_the_same_in_diffusers",
    ),
    "multiproc": (
        "test_distributed_nodes.py::test_two_nodes_train_like_one_process_with_the_same_global_batch",
        "test_distributed_nodes.py::test_a_killed_rank_ends_every_process_within_a_minute_naming_it",
        "test_sdxl_crop.py::test_two_ranks_with_buckets_train_sdxl_like_one_process",
        "test_distributed.py::test_two_ranks_train_like_one_process_with_the_same_global_batch",
        "test_distributed.py::test_only_the_placeholder_rows_are_communicated",
        "test_distributed.py::test_a_failing_rank_ends_the_run_with_its_error_on_the_console",
        "test_distributed.py::test_a_nan_loss_on_one_rank_stops_every_rank_after_the_same_step",
        "test_distributed.py::test_a_signal_on_one_rank_stops_every_rank_after_the_same_step",
        "test_sdxl.py::test_two_ranks_train_both_row_sets_like_one_process",
        "test_buckets.py::test_two_ranks_with_buckets_train_like_one_process",
        "test_buckets.py::test_every_rank_of_a_step_draws_the_same_bucket",
        "test_full_disk.py::test_two_cards_with_a_full_disk_end_with_the_error_not_a_hang",
        "test_selfcheck.py::test_selfcheck_on_cpu_reports_missing_half_kernels_and_passes_with_two_ranks",
    ),
    "builds": (
        "test_world.py::test_make_toy_world_is_deterministic_per_seed",
        "test_world_clip.py::test_clip_build_is_deterministic_per_seed",
        "test_tiny.py::test_same_seed_same_bytes_other_seed_other_weights",
        "test_runfiles.py::test_the_pages_own_environment_imports_runfiles_without_paddle",
    ),
    "slow": (
        "test_chinese.py::test_refused_placeholder_through_the_entry_point_is_one_line",
        "test_chinese.py::test_shipped_config_trains_end_to_end_with_a_chinese_validation_prompt",
        "test_distributed.py::test_accumulating_two_micro_batches_equals_one_batch_of_two",
        "test_distributed.py::test_gradient_checkpointing_recomputes_the_unet_and_keeps_the_update",
        "test_evaluation.py::test_chinese_run_is_scored_with_a_chinese_clip_and_chinese_prompts",
        "test_evaluation.py::test_early_stopping_stops_saves_the_embedding_and_says_why",
        "test_evaluation.py::test_eval_loss_after_resume_equals_the_uninterrupted_run",
        "test_evaluation.py::test_eval_loss_norm_and_drift_are_logged_and_match_the_saved_rows",
        "test_evaluation.py::test_evaluate_reads_files_converted_from_pytorch_and_takes_extra_judges",
        "test_evaluation.py::test_evaluate_refusals_are_one_line_errors",
        "test_evaluation.py::test_evaluate_swaps_both_sdxl_row_sets_per_step_with_one_pipeline_load",
        "test_full_disk.py::test_a_second_run_on_a_full_disk_never_mixes_with_the_first",
        "test_generate.py::test_generate_from_a_converted_safetensors_embedding_and_a_run_folder",
        "test_generate.py::test_generate_from_pdparams_reproduces_the_validation_grid",
        "test_generate.py::test_steps_sweep_renders_a_labelled_row_per_saved_step",
        "test_hostile_inputs.py::test_resume_latest_without_a_checkpoint_starts_over_without_mixing",
        "test_latents.py::test_no_cache_latents_trains_the_same_embedding",
        "test_latents.py::test_vae_released_only_when_nothing_needs_it",
        "test_mixed_precision.py::test_deterministic_is_off_by_default_and_setup_applies_it",
        "test_mixed_precision.py::test_fp32_with_loss_scaling_trains_the_same_rows",
        "test_precision.py::test_mixed_precision_refusal_is_one_line_and_exit_code_2",
        "test_sdxl.py::test_both_row_sets_train_and_nothing_else_changes",
        "test_sdxl.py::test_generate_loads_both_row_sets_into_the_sdxl_pipeline",
        "test_sdxl.py::test_resume_is_bitwise",
        "test_sdxl.py::test_the_benchmarked_diffusers_sdxl_algorithm_trains_the_first_encoders_placeholder_row",
        "test_sdxl.py::test_time_ids_are_each_images_size_and_crop",
        "test_templates.py::test_explicit_language_wins_over_the_model",
        "test_templates.py::test_run_trains_on_the_templates_of_the_models_language",
        "test_templates.py::test_template_file_replaces_the_builtin_templates",
        "test_tiny.py::test_generates_a_64x64_image",
        "test_tiny.py::test_train_step_reaches_the_token_embedding",
        "test_train.py::test_bad_data_dirs_are_refused",
        "test_train.py::test_bad_model_folders_are_refused",
        "test_train.py::test_bad_tokens_are_refused",
        "test_train.py::test_corrupt_image_among_good_ones_is_skipped",
        "test_train.py::test_demo_config_end_to_end",
        "test_train.py::test_every_vector_of_a_multi_vector_placeholder_trains",
        "test_train.py::test_full_pipeline_saved_with_no_only_save_embeds",
        "test_train.py::test_image_sizes_give_the_right_tensor_shapes",
        "test_train.py::test_logged_loss_is_the_mean_over_accumulated_micro_batches",
        "test_train.py::test_loss_goes_down_on_a_fixed_batch",
        "test_train.py::test_lr_schedule_ends_exactly_at_max_train_steps_with_accumulation",
        "test_train.py::test_model_whose_weights_do_not_fully_load_is_refused",
        "test_train.py::test_multi_token_initializer_initialises_from_the_mean",
        "test_train.py::test_only_placeholder_rows_change_even_in_the_middle_of_the_vocabulary",
        "test_train.py::test_saved_embedding_loads_in_ppdiffusers_and_changes_the_prompt",
        "test_train.py::test_seed_zero_is_a_seed",
        "test_train.py::test_unwritable_output_dir_is_refused",
        "test_train.py::test_v_prediction_with_noise_offset_trains_the_rows",
        "test_validation.py::test_validation_grids_and_an_unchanged_training_trajectory",
        "test_webui.py::test_check_placeholder_uses_the_trainer_rules",
        "test_webui.py::test_config_check_refuses_what_the_trainer_refuses_before_loading",
        "test_webui.py::test_evaluate_runs_as_a_project_subprocess_and_its_results_are_shown",
        "test_world.py::test_a_model_folder_with_a_manifest_is_hash_checked_before_loading",
        "test_world.py::test_caption_keep_decides_how_much_a_caption_names",
        "test_world.py::test_caption_pairs_say_the_same_thing_in_both_languages",
        "test_world.py::test_caption_repeat_spans_the_shape_and_style_words_like_a_multi_vector_placeholder",
        "test_world.py::test_chinese_world_draws_chinese_captions_as_the_english_world_draws_english_ones",
        "test_world.py::test_judge_grid_tool_finds_the_shape_in_a_grid",
        "test_world.py::test_shipped_judge_reads_held_out_renderings",
        "test_world.py::test_training_captions_follow_the_curriculum",
        "test_world.py::test_training_on_the_chinese_world_teaches_a_style",
        "test_world.py::test_training_on_the_world_teaches_an_object",
        "test_world.py::test_training_on_the_world_teaches_the_concept",
        "test_world_clip.py::test_bad_clip_recipe_is_refused_in_one_line_before_any_work",
        "test_world_clip.py::test_zero_shot_reads_every_attribute_of_held_out_renderings",
        "test_world_judge_eval.py::test_a_prompt_the_world_cannot_follow_is_refused_in_one_line",
        "test_world_judge_eval.py::test_evaluate_on_the_world_adds_the_judge_columns_without_a_flag",
        "test_step_choice.py::test_a_short_benchmark_run_writes_the_schema_and_repeats_itself_exactly",
        # took 2-5 s in a quick-tier run under load (13:23, load average 6 on 2 cores): out of the 4-minute tier
        "test_buckets.py::test_bucketed_cache_gives_each_variant_its_own_vae_posterior",
        "test_buckets.py::test_resume_with_buckets_and_captions_is_bitwise",
        "test_captions.py::test_both_mixes_templates_and_captions_and_fills_caption_templates",
        "test_captions.py::test_chinese_captions_become_each_images_prompt",
        "test_captions.py::test_long_captions_are_reported_by_file_and_a_cut_placeholder_refused",
        "test_checkpoint.py::test_checkpoint_describes_its_run",
        "test_checkpoint.py::test_checkpoints_total_limit_keeps_the_newest",
        "test_checkpoint.py::test_crash_during_a_checkpoint_save_keeps_the_previous_checkpoints",
        "test_checkpoint.py::test_ctrl_c_mid_run_saves_the_current_step_and_resume_matches_an_uninterrupted_run",
        "test_checkpoint.py::test_incompatible_resume_is_refused_before_any_model_loads",
        "test_checkpoint.py::test_latest_with_no_checkpoint_starts_from_step_zero",
        "test_checkpoint.py::test_non_finite_step_stops_and_keeps_the_last_good_embedding",
        "test_checkpoint.py::test_refusal_through_the_entry_point_is_one_error_with_exit_code_2",
        "test_checkpoint.py::test_resume_latest_continues_from_step_6_to_8_and_changed_length_is_allowed",
        "test_checkpoint.py::test_resumed_run_is_bitwise_identical_to_an_uninterrupted_one",
        "test_chinese.py::test_chinese_initializer_rows_are_the_mean_of_its_characters",
        "test_chinese.py::test_clip_model_name_heuristics_are_the_fallback",
        "test_chinese.py::test_language_comes_from_the_text_encoder",
        "test_chinese.py::test_name_heuristics_read_the_models_own_folder_name",
        "test_chinese.py::test_placeholder_stays_one_token_per_vector_in_real_sentences",
        "test_chinese.py::test_prompt_length_follows_the_tokenizer_within_the_text_encoders_positions",
        "test_chinese.py::test_saved_embedding_loads_into_the_matching_pipeline_and_changes_the_prompt",
        "test_chinese.py::test_training_prompts_are_tokenized_exactly_as_the_inference_pipeline_does",
        "test_chinese.py::test_xlmr_tokenizer_configs_that_crash_paddlenlp_still_load",
        "test_convert.py::test_printed_ppdiffusers_call_loads_the_embedding",
        "test_convert.py::test_refuses_bad_command_lines",
        "test_determinism.py::test_nearest_upsample_equals_interpolate_forward_and_backward_bit_for_bit",
        "test_determinism.py::test_selfcheck_repeatability_is_bit_identical_on_this_cpu_and_reports_the_largest_difference",
        "test_determinism.py::test_the_gpu_check_script_runs_its_checks_on_the_cpu_in_a_dry_run",
        "test_embeddings.py::test_ppdiffusers_load_textual_inversion_reads_pdparams",
        "test_full_disk.py::test_a_run_on_a_full_disk_ends_with_one_line",
        "test_generate.py::test_bad_arguments_are_one_line_errors_with_exit_code_2",
        "test_hostile_inputs.py::test_overwrite_keeps_the_new_runs_own_log_file",
        "test_hostile_inputs.py::test_overwrite_output_dir_removes_the_earlier_run_so_nothing_mixes",
        "test_hostile_inputs.py::test_resume_into_the_same_folder_with_the_same_command_still_continues",
        "test_hostile_inputs.py::test_row_corrupt_checkpoint_marker",
        "test_hostile_inputs.py::test_row_num_vectors_at_the_maximum_trains_every_vector",
        "test_mixed_precision.py::test_one_collective_and_one_host_read_per_optimizer_step",
        "test_mixed_precision.py::test_the_loss_scaler_state_resumes_exactly",
        "test_mixed_precision.py::test_twenty_skipped_steps_in_a_row_end_the_run_with_the_last_good_embedding",
        "test_mixed_precision.py::test_unet_in_another_dtype_trains_fp32_rows_through_an_fp32_text_encoder",
        "test_precision.py::test_gradient_checkpointing_recomputes_and_trains_the_same_embedding",
        "test_precision.py::test_kernel_problem_says_no_exactly_where_the_trainer_cannot_train",
        "test_tiny.py::test_diffusion_pipeline_resolves_the_class_from_model_index",
        "test_train.py::test_noise_offset_adds_one_draw_per_example_and_channel_to_the_noise",
        "test_webui.py::test_check_config_refuses_a_caption_extension_and_control_characters_before_loading",
    ),
}
# Kept in the quick tier on purpose although they take seconds: each is a module's main path.
#   test_train.py::test_gradient_clipping_limits_the_update_to_max_grad_norm   a short training run
#   test_checkpoint.py::test_sigterm_saves_embedding_and_checkpoint_of_the_current_step   a checkpoint written
#   test_captions.py::test_captions_train_end_to_end_from_metadata_jsonl   captions through a run
#   test_evaluation.py::test_evaluate_scores_every_saved_step_with_one_pipeline_load   tools/evaluate.py's job
#   test_generate.py::test_several_embeddings_load_together   a grid rendered with loaded embeddings
#   test_sdxl.py::test_sdxl_demo_config_end_to_end   SDXL training through the entry point
#   test_selfcheck.py::test_a_failing_precision_run_is_a_failed_check_and_a_non_zero_exit   the self-check's run
#   test_determinism.py::test_only_the_unets_upsampling_is_replaced_and_a_training_step_gives_the_same_bits
#   test_tiny.py::test_pipeline_loads_every_weight, test_validation.py::test_images_depend_only_on_the_seed
#   test_help.py, test_docs_commands.py, test_packaging.py: every command's --help and every documented command


def markers_of(file: str, function: str) -> set[str]:
    """The markers of test `function` (without its parameters) in tests/`file`."""
    found = {marker for marker, files in BY_FILE.items() if file in files}
    found |= {marker for marker, names in BY_TEST.items() if f"{file}::{function}" in names}
    if found & set(IMPLY_SLOW):
        found.add("slow")
    return found
