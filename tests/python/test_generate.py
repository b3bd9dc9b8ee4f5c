"""xattn.load_lm / LanguageModel.generate against transformers' generate (the committed ids of
tests/reference/gen_generate.py and gen_caption.py) and against the CLI's `xattn generate` on the
same inputs; int8 weights; errors."""
import os

import numpy as np
import pytest

import xattn
from conftest import fixture_path, run_cli

J = fixture_path("generate_cli")
CAP = fixture_path("caption")


def inputs():
    return (np.load(os.path.join(J, "memory.npy")), np.load(os.path.join(J, "memory_mask.npy")),
            np.load(os.path.join(J, "prompt.npy")))


def test_config_and_warnings():
    lm = xattn.load_lm(os.path.join(J, "model.safetensors"))
    c = lm.config
    assert c["hidden_size"] == 32 and c["vocab_size"] == 40 and c["has_head"]
    assert c["weights"] == "f32" and c["layer_norm_eps"] == pytest.approx(1e-12)
    assert isinstance(lm.warnings, str)
    assert xattn.load_lm(os.path.join(J, "model.safetensors"),
                         config=os.path.join(J, "config.json")).config["hidden_size"] == 32


def test_greedy_and_beams_equal_transformers():
    lm = xattn.load_lm(os.path.join(J, "model.safetensors"))
    mem, mask, prompt = inputs()
    ids = lm.generate(mem, mask, prompt, max_new_tokens=12)
    np.testing.assert_array_equal(ids, np.load(os.path.join(J, "expected_greedy.npy")))
    beams = lm.generate(mem, mask, prompt, max_new_tokens=12, num_beams=3, length_penalty=0.6,
                        early_stopping=True, no_repeat_ngram_size=2)
    np.testing.assert_array_equal(beams, np.load(os.path.join(J, "expected_beam.npy")))
    # video / audio features through the projector, and beams that never stop early
    v, a = np.load(os.path.join(J, "video.npy")), np.load(os.path.join(J, "audio.npy"))
    np.testing.assert_array_equal(lm.generate(video=v, audio=a, max_new_tokens=12),
                                  np.load(os.path.join(J, "expected_av.npy")))
    np.testing.assert_array_equal(
        lm.generate(video=v, audio=a, max_new_tokens=12, num_beams=4, length_penalty=1.5,
                    early_stopping="never"), np.load(os.path.join(J, "expected_av_beam.npy")))
    # sampling from the top-1 token is greedy search
    np.testing.assert_array_equal(
        lm.generate(mem, mask, prompt, max_new_tokens=12, do_sample=True, top_k=1, seed=3), ids)
    # the default length: 20 tokens in all
    assert lm.generate(video=v, audio=a).shape == (v.shape[0], 20)


def test_same_as_cli(tmp_path):
    lm = xattn.load_lm(os.path.join(J, "model.safetensors"))
    mem, mask, prompt = inputs()
    for extra, kw in (([], {}), (["--num-beams", "4", "--length-penalty", "1.5"],
                                 dict(num_beams=4, length_penalty=1.5)),
                      (["--do-sample", "--top-p", "0.9", "--temperature", "0.8", "--seed", "7"],
                       dict(do_sample=True, top_p=0.9, temperature=0.8, seed=7))):
        out = tmp_path / "ids.npy"
        run_cli("generate", os.path.join(J, "model.safetensors"), "--memory",
                os.path.join(J, "memory.npy"), "--memory-mask", os.path.join(J, "memory_mask.npy"),
                "--prompt", os.path.join(J, "prompt.npy"), "--max-new-tokens", "12", *extra,
                "--out", out)
        np.testing.assert_array_equal(lm.generate(mem, mask, prompt, max_new_tokens=12, **kw),
                                      np.load(out))


def test_captions_f32_and_int8():
    f32 = xattn.load_lm(os.path.join(CAP, "model.safetensors"))
    q8 = xattn.load_lm(os.path.join(CAP, "model.safetensors"), weights="int8")
    assert q8.config["weights"] == "int8"
    for k in range(4):
        v = np.load(os.path.join(CAP, f"video_{k}.npy"))
        a = np.load(os.path.join(CAP, f"audio_{k}.npy"))
        want = np.load(os.path.join(CAP, f"expected_ids_{k}.npy"))
        np.testing.assert_array_equal(f32.generate(video=v, audio=a), want)
        # the trained captioner says the same with its linear layers in int8
        np.testing.assert_array_equal(q8.generate(video=v, audio=a), want)
    mem = f32.project(video=np.load(os.path.join(CAP, "video_0.npy")),
                      audio=np.load(os.path.join(CAP, "audio_0.npy")))
    np.testing.assert_array_equal(f32.generate(mem, num_beams=4),
                                  np.load(os.path.join(CAP, "expected_beam_ids_0.npy")))


def test_errors(tmp_path):
    path = os.path.join(J, "model.safetensors")
    with pytest.raises(FileNotFoundError):
        xattn.load_lm(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="weights"):
        xattn.load_lm(path, weights="int4")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(open(path, "rb").read()[:100])
    with pytest.raises(xattn.FormatError):
        xattn.load_lm(bad)
    lm = xattn.load_lm(path)
    mem, mask, prompt = inputs()
    with pytest.raises(ValueError, match="not in the vocabulary|out of range"):
        lm.generate(mem, mask, np.array([1, 40]))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        lm.generate(mem, mask, prompt, max_new_tokens=31)
    with pytest.raises(ValueError, match="memory"):
        lm.generate(mem[..., :8])
    with pytest.raises(ValueError, match="memory_mask"):
        lm.generate(mem, mask[:, :2])
    with pytest.raises(ValueError, match="one"):
        lm.generate(mem, video=np.load(os.path.join(J, "video.npy")))
    with pytest.raises(ValueError, match="early_stopping"):
        lm.generate(mem, num_beams=2, early_stopping="sometimes")
    with pytest.raises(ValueError, match="top_p"):
        lm.generate(mem, do_sample=True, top_p=0.0)
    nan = mem.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        lm.generate(nan, mask)
    nohead = xattn.load_lm(fixture_path("generate_bert.safetensors"))
    with pytest.raises(NotImplementedError, match="prediction head"):
        nohead.generate(mem)
    with pytest.raises(ValueError, match="projector"):
        xattn.load_lm(fixture_path("generate_lm_tied.safetensors")).generate(
            video=np.load(os.path.join(J, "video.npy")))


def test_several_end_tokens_and_special_ids():
    """transformers' ids with the model's two end tokens, a pad and one end token given to the
    call (tests/reference/gen_generate_eos.py)."""
    from safetensors.numpy import load_file
    path = fixture_path("generate_eos.safetensors")
    t = load_file(path)
    lm = xattn.load_lm(path)
    eos = lm.config["eos_token_id"]
    assert isinstance(eos, list) and len(eos) == 2
    mem, mask, prompt = t["input.memory"], t["input.memory_mask"], t["input.prompt"]
    kw = dict(max_new_tokens=12)
    cases = {"greedy": {}, "greedy_pad5": dict(pad_token_id=5),
             "greedy_eos2": dict(eos_token_id=eos[1]),
             "beam3": dict(num_beams=3, length_penalty=1.0),
             "beam4_es": dict(num_beams=4, length_penalty=0.7, early_stopping=True),
             "beam3_never": dict(num_beams=3, length_penalty=1.3, early_stopping="never")}
    for case, extra in cases.items():
        np.testing.assert_array_equal(lm.generate(mem, mask, prompt, **kw, **extra),
                                      t["expected." + case], err_msg=case)
    # no end token: every row runs to max_new_tokens
    assert lm.generate(mem, mask, prompt, eos_token_id=[], **kw).shape == (3, 14)
    with pytest.raises(ValueError, match="vocabulary"):
        lm.generate(mem, mask, prompt, eos_token_id=[1, 99], **kw)
    with pytest.raises(ValueError, match="eos_token_id"):
        lm.generate(mem, mask, prompt, eos_token_id=list(range(9)), **kw)
    # without a prompt, bos_token_id starts every sequence
    ids = lm.generate(mem, mask, bos_token_id=4, **kw)
    assert (ids[:, 0] == 4).all()


def test_left_padded_prompts(tmp_path):
    """Prompts padded on the left with their attention mask: transformers' ids (greedy and beams),
    from Python and from the CLI (--prompt-mask)."""
    from safetensors.numpy import load_file
    path = fixture_path("generate_ragged.safetensors")
    t = load_file(path)
    lm = xattn.load_lm(path)
    mem, mask = t["input.memory"], t["input.memory_mask"]
    prompt, pmask = t["input.prompt"], t["input.prompt_mask"]
    cases = {"greedy": {}, "beam3": dict(num_beams=3, length_penalty=1.0),
             "beam4_es": dict(num_beams=4, length_penalty=0.7, early_stopping=True)}
    for case, kw in cases.items():
        np.testing.assert_array_equal(
            lm.generate(mem, mask, prompt, prompt_mask=pmask, max_new_tokens=12, **kw),
            t["expected." + case], err_msg=case)
    for name, a in (("memory", mem), ("mask", mask.astype(bool)), ("prompt", prompt),
                    ("pmask", pmask.astype(bool))):
        np.save(tmp_path / f"{name}.npy", a)
    run_cli("generate", path, "--memory", tmp_path / "memory.npy", "--memory-mask",
            tmp_path / "mask.npy", "--prompt", tmp_path / "prompt.npy", "--prompt-mask",
            tmp_path / "pmask.npy", "--max-new-tokens", "12", "--num-beams", "3", "--out",
            tmp_path / "ids.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), t["expected.beam3"])
    with pytest.raises(ValueError, match="prompt_mask"):
        lm.generate(mem, mask, prompt, prompt_mask=pmask[:, :2])
    r = run_cli("generate", path, "--memory", tmp_path / "memory.npy", "--prompt-mask",
                tmp_path / "pmask.npy", "--out", tmp_path / "x.npy", check=False)
    assert r.returncode == 2 and "--prompt-mask needs --prompt" in r.stderr
