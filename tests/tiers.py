"""Test tiers: which tests are slow, and why. tests/conftest.py applies these markers at collection.

    python -m pytest -q --durations=25 tests      # the full suite: every test (what .ci/run runs)
    python -m pytest -q -m "not slow" tests       # the quick tier: the edit loop, every module's main path
    python -m pytest -q -m "not browser" tests    # e.g. everything but the Chromium tests

Markers (registered in pyproject.toml): `browser` drives the web page in Chromium, `torch` runs PyTorch/diffusers from
.venv-torch, `multiproc` launches several training processes, `builds` builds a model world or an environment; each
of them implies `slow`. Plain `slow` marks tests that took 5 s or more in a full run on this project's 2-core
machine (measured with --durations=0; see the PKG note of issue 25), except the one main-path test each module keeps
in the quick tier (tests/test_tiers.py checks that every test file keeps one, and that every name here exists).

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
    ),
}
# Kept in the quick tier on purpose although they took 5 s or more: each is its module's main path.
#   test_train.py::test_gradient_clipping_uses_the_trained_rows_norm   a short training run, rows saved
#   test_evaluation.py::test_evaluate_scores_every_saved_step_with_one_pipeline_load   tools/evaluate.py's job
#   test_generate.py::test_bad_arguments_are_one_line_errors_with_exit_code_2   the tool's parser and refusals
#   test_sdxl.py::test_sdxl_demo_config_end_to_end   SDXL training through the entry point
#   test_selfcheck.py::test_a_failing_precision_run_is_a_failed_check_and_a_non_zero_exit   the self-check's run
#   test_tiny.py::test_pipeline_loads_every_weight, test_layout_is_what_a_real_download_has   tiny model builds
#   test_webui_browser.py::test_the_timer_never_changes_a_selected_run   (browser: out anyway)


def markers_of(file: str, function: str) -> set[str]:
    """The markers of test `function` (without its parameters) in tests/`file`."""
    found = {marker for marker, files in BY_FILE.items() if file in files}
    found |= {marker for marker, names in BY_TEST.items() if f"{file}::{function}" in names}
    if found & set(IMPLY_SLOW):
        found.add("slow")
    return found
