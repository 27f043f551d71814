"""Benchmark `lfmq serve` against llama-server on the same GGUF and settings.

Both servers run side by side on the synthetic LFM2.5-350M at Q4_0 (random weights: speed depends on shapes and
types only), built from the same llama.cpp tree (llama-server by benchmarks/llama_tools.py, with the flags of lfmq's
binding), with the same threads, batch and ubatch, four slots of the same context each (llama-server: -np 4 and a
context split between them, as lfmq's sequences are), greedy sampling with no penalties, `ignore_eos` so that every
answer has exactly the asked length. Each prompt starts with a different number, so neither server answers from a
cached prompt. The servers are measured in turn, alternating over `--rounds`, one request at a time unless said:

- TTFT: the time to a whole answer of max_tokens=1 (prefill of a ~130-token prompt and one token), median;
- decode tok/s, one client: (N - 1) / (time of an N-token answer - TTFT of the same prompt length), median;
- aggregate tok/s, four clients at once: 4 x N tokens / wall time of the four, median.

It prints each figure for both servers and the ratios lfmq / llama-server (for TTFT: llama-server's time / lfmq's,
so above 1 is better for lfmq too). Targets: TTFT and decode at least 0.95x, aggregate at least 0.9x.

    .venv/bin/python benchmarks/serve.py [--rounds 3] [--tokens 64] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, default_threads, emit_json, ensure_f16, ensure_quantized, lfmq_cli, load_average, tool  # noqa: E402

PROMPT_WORDS = 30           # about 130 tokens with the chat template
N_CTX = 2048                # per slot
SLOTS = 4
BATCH = 512
GREEDY = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of both servers (default 3)")
    ap.add_argument("--tokens", type=int, default=64, help="N: tokens of each timed answer (default 64)")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--model", type=Path, help="a GGUF (default: the synthetic LFM2.5-350M at Q4_0)")
    ap.add_argument("--json", type=Path, metavar="FILE")
    return ap.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A server process on loopback and a way to ask it for a completion."""

    def __init__(self, name: str, argv: list[Any], port: int, log: Path) -> None:
        self.name, self.port, self.log = name, port, log
        self._out = log.open("wb")
        self.proc = subprocess.Popen([str(a) for a in argv], stdout=self._out, stderr=subprocess.STDOUT, cwd=REPO)
        self._counter = 0
        self._lock = threading.Lock()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{name} exited ({self.proc.returncode}): see {log}")
            try:
                status, _ = self._get("/health")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        sys.exit(f"{name} did not start in 300 s: see {log}")

    def _get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def prompt(self) -> str:
        with self._lock:
            self._counter += 1
            n = self._counter
        # a different start each time: no prompt cache can serve it
        return f"{n * 7919 % 100003} " + " ".join(f"word{(n * 31 + i) % 997}" for i in range(PROMPT_WORDS))

    def complete(self, max_tokens: int) -> tuple[float, int]:
        """(seconds, completion tokens) of one whole answer."""
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": self.prompt()}],
                           "max_tokens": max_tokens, "ignore_eos": True, "seed": 1, **GREEDY})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            started = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            seconds = time.perf_counter() - started
        finally:
            conn.close()
        if r.status != 200:
            sys.exit(f"{self.name} answered {r.status}: {data[:300]!r}")
        n = json.loads(data)["usage"]["completion_tokens"]
        if n != max_tokens:
            sys.exit(f"{self.name} generated {n} tokens, not {max_tokens}: ignore_eos not honoured?")
        return seconds, n

    def concurrent(self, clients: int, max_tokens: int) -> float:
        """Aggregate tok/s of `clients` answers asked at once."""
        results: list[tuple[float, int]] = []
        threads = [threading.Thread(target=lambda: results.append(self.complete(max_tokens))) for _ in range(clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        return sum(n for _, n in results) / wall

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def measure(server: Served, tokens: int) -> dict[str, float]:
    server.complete(1)  # warm-up
    ttft = statistics.median(server.complete(1)[0] for _ in range(3))
    whole = statistics.median(server.complete(tokens)[0] for _ in range(2))
    aggregate = server.concurrent(SLOTS, tokens)
    return {"ttft_s": ttft, "decode_tps": (tokens - 1) / (whole - ttft), "aggregate_tps": aggregate}


def main() -> None:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.model or ensure_quantized(args.workdir, ensure_f16(args.workdir), "Q4_0", args.threads)
    llama_server = tool("llama-server")
    logs = args.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    p1, p2 = free_port(), free_port()
    lfmq = Served("lfmq serve", lfmq_cli("serve", model, "--port", p1, "-t", args.threads, "-c", N_CTX,
                                         "--parallel", SLOTS), p1, logs / "serve-lfmq.log")
    try:
        peer = Served("llama-server", [llama_server, "-m", model, "--host", "127.0.0.1", "--port", p2, "-t",
                                       args.threads, "-tb", args.threads, "-c", N_CTX * SLOTS, "-np", SLOTS,
                                       "-b", BATCH, "-ub", BATCH, "--no-kv-unified", "--no-webui"],
                      p2, logs / "serve-llama-server.log")
    except SystemExit:
        lfmq.stop()
        raise
    runs: dict[str, list[dict[str, float]]] = {"lfmq": [], "llama-server": []}
    try:
        for r in range(args.rounds):
            for name, server in (("lfmq", lfmq), ("llama-server", peer)) if r % 2 == 0 else (("llama-server", peer), ("lfmq", lfmq)):
                runs[name].append(measure(server, args.tokens))
                print(f"round {r + 1} {name:12s} " + "  ".join(f"{k} {v:.3f}" for k, v in runs[name][-1].items()),
                      flush=True)
    finally:
        lfmq.stop()
        peer.stop()
    med = {name: {k: statistics.median(run[k] for run in rs) for k in rs[0]} for name, rs in runs.items()}
    ratios = {"ttft": med["llama-server"]["ttft_s"] / med["lfmq"]["ttft_s"],
              "decode": med["lfmq"]["decode_tps"] / med["llama-server"]["decode_tps"],
              "aggregate_4": med["lfmq"]["aggregate_tps"] / med["llama-server"]["aggregate_tps"]}
    targets = {"ttft": 0.95, "decode": 0.95, "aggregate_4": 0.9}
    print(f"\n{model.name}, {args.threads} threads, {args.tokens}-token answers, {args.rounds} rounds, "
          f"load average {load_average():.2f}")
    print(f"{'':14s}{'TTFT s':>10s}{'decode tok/s':>14s}{'4 clients tok/s':>17s}")
    for name in ("lfmq", "llama-server"):
        m = med[name]
        print(f"{name:14s}{m['ttft_s']:10.3f}{m['decode_tps']:14.1f}{m['aggregate_tps']:17.1f}")
    for k, v in ratios.items():
        print(f"ratio {k:12s} {v:.3f}x  (target >= {targets[k]}x: {'met' if v >= targets[k] else 'MISSED'})")
    emit_json({"model": model.name, "threads": args.threads, "tokens": args.tokens, "rounds": args.rounds,
               "median": med, "ratios": ratios, "targets": targets, "runs": runs,
               "load_average": load_average(), "pid": os.getpid()}, args.json)


if __name__ == "__main__":
    main()
