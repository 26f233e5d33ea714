"""ppti.embeddings: every layout read and written, lossless decoding, token naming, and refusal of unsafe or
malformed files. Paddle-side clients (paddle.load, ppdiffusers load_textual_inversion) are the real ones."""

import base64
import json
import pickle
import pickletools
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import REPO
from helpers import RunsCode, malicious_files
from ppti.embeddings import (
    EmbeddingFormatError,
    UnsafePickleError,
    read_embeddings,
    round_to,
    write_embeddings,
    write_sdxl_pair,
)
from ppti.embeddings.tensors import bf16_bits

WIDTH = 32  # the tiny model's text-encoder width
FILE_NAMES = {"pdparams": "e.pdparams", "diffusers": "e.safetensors", "webui": "e-webui.safetensors", "pt": "e-pt.pt"}
# The zip-entry checks of AUTOMATIC1111 WebUI's modules/safe.py, oldest to newest.
WEBUI_ZIP_CHECKS = [
    lambda name: name in ("archive/data.pkl", "archive/version") or re.match(r"^archive/data/\d+$", name),
    lambda name: re.match(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$", name),
    lambda name: re.match(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$", name),
]
# Globals WebUI's RestrictedUnpickler allows (that a tensor file can reference).
WEBUI_GLOBALS = {"torch._utils _rebuild_tensor_v2", "torch FloatStorage", "torch HalfStorage",
                 "torch BFloat16Storage", "collections OrderedDict"}


def vectors(n=3, width=WIDTH, seed=0):
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)


def pickle_globals(data: bytes) -> set:
    return {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


# ---- round trips --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pdparams", "diffusers", "webui", "pt"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", [(3, WIDTH), (1, WIDTH), (WIDTH,)])
def test_every_format_round_trips_exactly_after_rounding(tmp_path, fmt, dtype, shape):
    values = vectors(3)[: shape[0] if len(shape) == 2 else 1].reshape(shape)
    path = write_embeddings(tmp_path / FILE_NAMES[fmt], {"<tok>": values}, fmt=fmt, dtype=dtype)
    (emb,) = read_embeddings(path)
    expected = round_to(values.reshape(-1, WIDTH), dtype)
    assert emb.vectors.dtype == np.float32 and emb.vectors.shape == expected.shape  # 1-D becomes [1, dim]
    np.testing.assert_array_equal(emb.vectors, expected)
    assert emb.dtype == dtype
    if dtype == "fp32":
        assert emb.vectors.tobytes() == values.tobytes()  # bit-exact


@pytest.mark.parametrize("suffix", [".bin", ".pt"])
def test_diffusers_and_webui_formats_write_torch_zips_for_torch_suffixes(tmp_path, suffix):
    values = vectors(2)
    for fmt in ("diffusers", "webui"):
        path = write_embeddings(tmp_path / f"{fmt}{suffix}", {"<tok>": values}, fmt=fmt)
        assert zipfile.is_zipfile(path)
        (emb,) = read_embeddings(path)
        assert (emb.container, emb.source_format) == ("torch-zip", {"diffusers": "diffusers", "webui": "emb_params"}[fmt])
        np.testing.assert_array_equal(emb.vectors, values)


def test_bf16_rounds_to_nearest_even_and_keeps_specials():
    ones = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, np.inf, -np.inf, 0.0, -0.0], np.float32)
    assert bf16_bits(ones).tolist() == [0x3F80, 0x3F82, 0x3F81, 0x7F80, 0xFF80, 0x0000, 0x8000]
    assert np.isnan(round_to(np.array([np.nan], np.float32), "bf16")).all()


def test_fp16_overflow_is_refused(tmp_path):
    with pytest.raises(EmbeddingFormatError, match="fp16 range"):
        write_embeddings(tmp_path / "e.pdparams", {"<t>": np.full((1, 4), 1e6, np.float32)}, dtype="fp16")


def test_writer_refuses_bad_input(tmp_path):
    with pytest.raises(EmbeddingFormatError, match="unknown format"):
        write_embeddings(tmp_path / "e", {"<t>": vectors()}, fmt="onnx")
    with pytest.raises(EmbeddingFormatError, match="exactly one"):
        write_embeddings(tmp_path / "e.pt", {"<a>": vectors(), "<b>": vectors()}, fmt="pt")
    with pytest.raises(EmbeddingFormatError, match="shape"):
        write_embeddings(tmp_path / "e.pdparams", {"<t>": np.zeros((2, 3, 4), np.float32)})
    with pytest.raises(EmbeddingFormatError, match="float"):
        write_embeddings(tmp_path / "e.pdparams", {"<t>": np.zeros((2, 4), np.int64)})
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = write_embeddings(tmp_path / "e.safetensors", {"<t>": vectors()}, fmt="diffusers")
    write_embeddings(path, {"<t>": vectors(seed=1)}, fmt="diffusers")
    assert [p.name for p in tmp_path.iterdir()] == ["e.safetensors"]
    np.testing.assert_array_equal(read_embeddings(path)[0].vectors, vectors(seed=1))


# ---- what each writer puts in the file ----------------------------------------------------------------------


def test_pdparams_is_what_paddle_save_writes_and_paddle_load_reads(tmp_path):
    import paddle

    values = vectors(2)
    ours = write_embeddings(tmp_path / "ours.pdparams", {"<tok>": values})
    paddle.save({"<tok>": paddle.to_tensor(values)}, str(tmp_path / "paddle.pdparams"))
    raw_ours = pickle.loads(ours.read_bytes())
    raw_paddle = pickle.loads((tmp_path / "paddle.pdparams").read_bytes())
    assert raw_ours.keys() == raw_paddle.keys() == {"<tok>", "StructuredToParameterName@@"}
    np.testing.assert_array_equal(raw_ours["<tok>"], raw_paddle["<tok>"])
    loaded = paddle.load(str(ours))
    assert list(loaded) == ["<tok>"] and loaded["<tok>"].dtype == paddle.float32
    np.testing.assert_array_equal(loaded["<tok>"].numpy(), values)
    bf16 = paddle.load(str(write_embeddings(tmp_path / "bf16.pdparams", {"<tok>": values}, dtype="bf16")))
    assert bf16["<tok>"].dtype == paddle.bfloat16
    np.testing.assert_array_equal(bf16["<tok>"].astype("float32").numpy(), round_to(values, "bf16"))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_reads_files_written_by_paddle_save(tmp_path, dtype):
    import paddle

    values = vectors(2)
    tensor = paddle.to_tensor(values).astype(dtype)
    paddle.save({"<tok>": tensor}, str(tmp_path / "learned_embeds.pdparams"))
    paddle.save(tensor[0], str(tmp_path / "bare.pdparams"))  # a bare tensor: token from the file stem
    expected = tensor.astype("float32").numpy()
    (emb,) = read_embeddings(tmp_path / "learned_embeds.pdparams")
    assert (emb.token, emb.source_format, emb.dtype) == ("<tok>", "pdparams", {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype])
    np.testing.assert_array_equal(emb.vectors, expected)
    (bare,) = read_embeddings(tmp_path / "bare.pdparams")
    assert (bare.token, bare.source_format) == ("bare", "bare-tensor")
    np.testing.assert_array_equal(bare.vectors, expected[:1])


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_ppdiffusers_load_textual_inversion_reads_pdparams(tiny_model_en, tmp_path, dtype):
    from ppdiffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_en), safety_checker=None)
    values = vectors(2)
    path = write_embeddings(tmp_path / "learned_embeds.pdparams", {"<tok>": values}, dtype=dtype)
    pipe.load_textual_inversion(str(path))
    ids = pipe.tokenizer.convert_tokens_to_ids(["<tok>", "<tok>_1"])
    rows = pipe.text_encoder.get_input_embeddings().weight.numpy()[ids]
    np.testing.assert_array_equal(rows, round_to(values, dtype))


def test_safetensors_metadata_and_true_bf16(tmp_path):
    from safetensors import safe_open

    path = write_embeddings(tmp_path / "e.safetensors", {"<tok>": vectors()}, fmt="diffusers", dtype="bf16")
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_length])
    assert header["__metadata__"] == {"format": "pt"}
    assert header["<tok>"]["dtype"] == "BF16" and header["<tok>"]["shape"] == [3, WIDTH]
    with safe_open(str(write_embeddings(tmp_path / "f.safetensors", {"<tok>": vectors()}, fmt="webui")), "np") as f:
        assert list(f.keys()) == ["emb_params"]


def test_webui_pt_has_webui_fields_and_passes_every_webui_zip_check(tmp_path):
    path = write_embeddings(tmp_path / "cat-toy.pt", {"<cat-toy>": vectors(2)}, fmt="pt", dtype="fp16", step=500)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        data_pkl = archive.read("archive/data.pkl")
        storage = archive.getinfo("archive/data/0")
    assert sorted(names) == ["archive/data.pkl", "archive/data/0", "archive/version"]
    for check in WEBUI_ZIP_CHECKS:
        assert all(check(name) for name in names)
    assert pickle_globals(data_pkl) <= WEBUI_GLOBALS
    assert (storage.header_offset + 30 + len(storage.filename) + len(storage.extra)) % 64 == 0  # mmap-aligned
    (emb,) = read_embeddings(path)
    assert (emb.token, emb.token_source, emb.source_format) == ("<cat-toy>", "name field", "webui-pt")


def test_sdxl_pair_as_one_webui_file_or_two_files(tmp_path):
    clip_l, clip_g = vectors(2, 768), vectors(2, 1280, seed=1)
    (f5,) = write_sdxl_pair(tmp_path / "pair.safetensors", "<s>", clip_l, clip_g, fmt="webui")
    l_emb, g_emb = read_embeddings(f5)
    assert (l_emb.part, g_emb.part, l_emb.token, l_emb.source_format) == ("clip_l", "clip_g", "pair", "sdxl-pair")
    np.testing.assert_array_equal(g_emb.vectors, clip_g)
    first, second = write_sdxl_pair(tmp_path / "learned_embeds.pdparams", "<s>", clip_l, clip_g, fmt="pdparams")
    assert second.name == "learned_embeds_2.pdparams"
    assert read_embeddings(second)[0].vectors.shape == (2, 1280)
    with pytest.raises(EmbeddingFormatError, match="different vector counts"):
        write_sdxl_pair(tmp_path / "x.safetensors", "<s>", clip_l, clip_g[:1], fmt="webui")
    with pytest.raises(EmbeddingFormatError, match="fmt='webui'"):
        write_sdxl_pair(tmp_path / "x.pt", "<s>", clip_l, clip_g, fmt="pt")


# ---- token naming -------------------------------------------------------------------------------------------


def test_token_naming_rules(tmp_path):
    values = vectors(1)
    cases = {
        write_embeddings(tmp_path / "learned_embeds.safetensors", {"<key>": values}, fmt="diffusers"): ("<key>", "key"),
        write_embeddings(tmp_path / "stem-a.pt", {"<name>": values}, fmt="pt"): ("<name>", "name field"),
        write_embeddings(tmp_path / "stem-b.safetensors", {"<x>": values}, fmt="webui"): ("stem-b", "file stem"),
    }
    for path, expected in cases.items():
        (emb,) = read_embeddings(path)
        assert (emb.token, emb.token_source) == expected, path.name
        (renamed,) = read_embeddings(path, token="mine")
        assert (renamed.token, renamed.token_source) == ("mine", "argument")


def test_several_embeddings_in_one_file_are_all_read_but_cannot_share_a_name(tmp_path):
    path = write_embeddings(tmp_path / "two.pdparams", {"<a>": vectors(1), "<b>": vectors(2)})
    assert [e.token for e in read_embeddings(path)] == ["<a>", "<b>"]
    with pytest.raises(EmbeddingFormatError, match="2 embeddings"):
        read_embeddings(path, token="x")


# ---- WebUI PNG embeddings -----------------------------------------------------------------------------------


def webui_png(path, data, compressed=False):
    """What WebUI's embedding_to_b64 + PngInfo.add_text write into an image."""
    from PIL import Image, PngImagePlugin

    class Encoder(json.JSONEncoder):
        def default(self, obj):
            return {"TORCHTENSOR": obj.tolist()} if isinstance(obj, np.ndarray) else super().default(obj)

    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(data, cls=Encoder).encode()).decode(), zip=compressed)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("compressed", [False, True])
def test_webui_png_embedding(tmp_path, compressed):
    values = vectors(2)
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": values}, "name": "png-tok", "step": 3}
    (emb,) = read_embeddings(webui_png(tmp_path / "image.png", data, compressed))
    assert (emb.token, emb.source_format, emb.container) == ("png-tok", "webui-png", "png")
    np.testing.assert_array_equal(emb.vectors, values)


def test_png_without_embedding_is_refused(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.preview.png")
    with pytest.raises(EmbeddingFormatError, match="sd-ti-embedding"):
        read_embeddings(tmp_path / "x.preview.png")


# ---- refusals -----------------------------------------------------------------------------------------------


def test_pickles_that_would_run_code_are_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    for path in malicious_files(tmp_path, marker):
        with pytest.raises(UnsafePickleError, match=r"references (posix|os)\.system"):
            read_embeddings(path)
    assert not marker.exists()
    # The payload is live: a plain unpickler does run it (in a child process, with another marker).
    live = tmp_path / "live"
    payload = pickle.dumps(RunsCode(f"touch {live}"), protocol=2)
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=payload, check=True)
    assert live.exists()


@pytest.mark.parametrize("content, message", [
    (b"not an embedding at all", "unknown container"),
    (b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.rest", "legacy"),
    (pickle.dumps({"<a>": "text"}), "unknown layout"),
    (pickle.dumps({}), "unknown layout"),
    (pickle.dumps({"<a>": np.zeros((2, 3, 4), np.float32)}), r"shape \(2, 3, 4\)"),
    (pickle.dumps({"<a>": np.zeros((2, 4), np.int64)}), "not a float embedding"),
    (pickle.dumps({"<a>": np.zeros((2, 4), object)}), "refusing numpy dtype|not allowed"),
    (pickle.dumps({"string_to_param": {"*": np.zeros(4, np.float32), "x": np.zeros(4, np.float32)}}), "2 terms"),
    (pickle.dumps({"clip_l": np.zeros((2, 4), np.float32), "clip_g": np.zeros((1, 8), np.float32)}), "inconsistent"),
    (pickle.dumps({"<a>": np.zeros(4, np.float32)})[:-20], "not a readable pickle"),
])
def test_malformed_files_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.pdparams"
    path.write_bytes(content)
    with pytest.raises(EmbeddingFormatError, match=message) as info:
        read_embeddings(path)
    assert str(info.value).startswith(str(path))


def test_malformed_safetensors_are_refused(tmp_path):
    good = write_embeddings(tmp_path / "good.safetensors", {"<t>": vectors()}, fmt="diffusers").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[:-10])
    with pytest.raises(EmbeddingFormatError, match="truncated"):
        read_embeddings(truncated)
    header = json.dumps({f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
                         for i in range(300)}).encode()
    model = tmp_path / "model.safetensors"
    model.write_bytes(len(header).to_bytes(8, "little") + header + bytes(1200))
    with pytest.raises(EmbeddingFormatError, match="300 tensors"):
        read_embeddings(model)
    ints = tmp_path / "ints.safetensors"
    header = json.dumps({"<t>": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    ints.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    with pytest.raises(EmbeddingFormatError, match="I64"):
        read_embeddings(ints)


def test_readers_work_with_torch_and_paddle_unavailable(tmp_path):
    """Every reader runs in a process where importing torch or paddle fails."""
    paths = [write_embeddings(tmp_path / name, {"<t>": vectors()}, fmt=fmt, dtype="bf16")
             for fmt, name in FILE_NAMES.items()]
    paths.append(webui_png(tmp_path / "e.png", {"string_to_param": {"*": vectors()}, "name": "p"}))
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['paddle'] = None\n"
        "from ppti.embeddings import read_embeddings\n"
        "print([read_embeddings(p)[0].vectors.shape for p in sys.argv[1:]])"
    )
    proc = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([(3, WIDTH)] * 5)


def test_zip_that_is_not_a_torch_checkpoint_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(EmbeddingFormatError, match="not a torch checkpoint"):
        read_embeddings(path)


def test_torch_zip_storage_smaller_than_declared_is_refused(tmp_path):
    path = write_embeddings(tmp_path / "e.bin", {"<t>": vectors()}, fmt="diffusers")
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    entries["archive/data/0"] = entries["archive/data/0"][:16]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(EmbeddingFormatError, match="holds 16 bytes"):
        read_embeddings(path)
