"""One peer, one phase, one process: the measuring half of bench/compare.py.

    python bench/_worker.py PEER PHASE '{"budget": 1.0, ...}'

Prints one JSON object on its last stdout line. Runs inside the peer's own
interpreter (its venv), so it needs nothing but the standard library and the
peer itself. Phases:

  timing   ns/call tight (2 and 20 keys, net of building the dict), spaced
           (2 keys, each call timed alone between ~20 us of Python work),
           slowdown of a CPU-bound pure-Python loop that logs every step
  close    N 2-key calls, then close() timed; points read back; bytes on disk
  read     1 M points (50 k calls of 20 keys) written, closed, read back timed
  memory   peak RSS after N 20-key calls and close()
  cliffs   what real loops pass (issue 10): keys built anew each call
           (f-strings, 2 and 20 keys), numpy.float64/float32/int64 and Python
           int values, each as a ratio to the literal-key float case timed
           beside it (numpy cases need numpy in the peer's venv; else noted)

Every phase is budgeted in seconds: a slow peer makes fewer calls (the count
is reported) instead of running for an hour.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time

KEYS2 = ("loss", "acc")
KEYS20 = tuple(f"metric_{i:02d}" for i in range(20))
pc = time.perf_counter_ns


def busy(k: int) -> int:
    """The pure-Python work of one training step (k is calibrated to ~20 us)."""
    s = 0
    for j in range(k):
        s += j * j
    return s


def dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1 << 20) if sys.platform == "darwin" else r / 1024


# ---- the peers -----------------------------------------------------------------
# Each adapter: open(base) starts a run whose files all live under `base` and
# sets self.log (called as log(dict, step=i)); settle() lets background work
# drain between measurements; close() ends the run; read() returns
# (points, seconds) for reading every point back into per-key columns.

class Peer:
    log = None

    def settle(self) -> None:
        time.sleep(0.2)

    def read(self):  # pragma: no cover - overridden
        return None, None


class NoOp(Peer):
    """The floor: a Python method call that takes the dict and does nothing."""

    def log_metrics(self, metrics, step=None):
        pass

    def open(self, base):
        self.log = self.log_metrics

    def close(self):
        pass

    def read(self):
        return None, None


class Expman(Peer):
    def open(self, base):
        from expman import Experiment
        self.exp = Experiment("bench", base_dir=base, capture_env=False)
        self.log = self.exp.log_metrics

    def settle(self):
        self.exp.flush()
        time.sleep(0.05)

    def close(self):
        self.exp.close()

    def read(self):
        import expman
        t0 = time.perf_counter()
        run = expman.open_run(self.exp.run_dir)
        cols = {k: (s.steps, s.values, s.times) for k, s in run.metrics.items()}
        dt = time.perf_counter() - t0
        return sum(len(c[0]) for c in cols.values()), dt


class ExpmanRs(Peer):
    def open(self, base):
        from expman import Experiment
        self.exp = Experiment("bench", base_dir=base, redirect_console=False,
                              heartbeat_interval_secs=0, system_metrics_interval_secs=0,
                              capture_provenance=False)
        self.run_dir = self.exp.run_dir
        self.log = self.exp.log_vector

    def close(self):
        self.exp.close()

    def read(self):
        import expman
        t0 = time.perf_counter()
        rows = expman.read_metrics(self.run_dir)
        cols = {}
        for r in rows:
            for k, v in r.items():
                if k not in ("step", "timestamp") and v is not None:
                    cols.setdefault(k, []).append((r["step"], v))
        dt = time.perf_counter() - t0
        return sum(len(c) for c in cols.values()), dt


class JsonlOrjson(Peer):
    """What a user writes by hand: one orjson line per call into a buffered file."""

    def open(self, base):
        import orjson
        self.path = os.path.join(base, "metrics.jsonl")
        self.f = open(self.path, "wb", buffering=1 << 16)
        write, dumps, now = self.f.write, orjson.dumps, time.time
        opt = orjson.OPT_APPEND_NEWLINE

        def log(metrics, step=None):
            write(dumps({"step": step, "time": now(), **metrics}, option=opt))
        self.log = log

    def settle(self):
        self.f.flush()
        time.sleep(0.05)

    def close(self):
        self.f.close()

    def read(self):
        import orjson
        from array import array
        t0 = time.perf_counter()
        cols: dict = {}
        with open(self.path, "rb") as f:
            for line in f:
                rec = orjson.loads(line)
                step, t = rec.pop("step"), rec.pop("time")
                for k, v in rec.items():
                    c = cols.get(k)
                    if c is None:
                        c = cols[k] = (array("q"), array("d"), array("d"))
                    c[0].append(step)
                    c[1].append(v)
                    c[2].append(t)
        dt = time.perf_counter() - t0
        return sum(len(c[0]) for c in cols.values()), dt


class TensorboardX(Peer):
    """SummaryWriter.add_scalar once per key, as users write it."""

    def open(self, base):
        from tensorboardX import SummaryWriter
        self.dir = base
        self.w = SummaryWriter(logdir=base)
        add = self.w.add_scalar

        def log(metrics, step=None):
            for k, v in metrics.items():
                add(k, v, step)
        self.log = log

    def settle(self):
        self.w.flush()
        time.sleep(0.2)

    def close(self):
        self.w.close()

    def read(self):
        # tensorboardX ships no reader: parse its TFRecord event files with its own protobufs
        import struct
        from tensorboardX.proto import event_pb2
        t0 = time.perf_counter()
        cols: dict = {}
        for root, _d, files in os.walk(self.dir):
            for fn in files:
                if "tfevents" not in fn:
                    continue
                with open(os.path.join(root, fn), "rb") as f:
                    data = f.read()
                pos, n = 0, len(data)
                ev = event_pb2.Event()
                while pos + 12 <= n:
                    (length,) = struct.unpack_from("<Q", data, pos)
                    ev.ParseFromString(data[pos + 12:pos + 12 + length])
                    pos += 12 + length + 4
                    for v in ev.summary.value:
                        cols.setdefault(v.tag, []).append((ev.step, ev.wall_time, v.simple_value))
        dt = time.perf_counter() - t0
        return sum(len(c) for c in cols.values()), dt


class Wandb(Peer):
    def open(self, base):
        import wandb
        self.dir = base
        self.run = wandb.init(project="bench", dir=base, mode="offline",
                              settings=wandb.Settings(console="off", save_code=False,
                                                      disable_git=True, x_disable_stats=True,
                                                      silent=True))
        self.log = self.run.log

    def close(self):
        self.run.finish()

    def read(self):
        # offline runs are only readable by syncing to a server; read the .wandb
        # log (LevelDB log framing of protobuf Records) with wandb's own protobufs
        import struct
        from wandb.proto import wandb_internal_pb2 as pb
        t0 = time.perf_counter()
        path = None
        for root, _d, files in os.walk(self.dir):
            for fn in files:
                if fn.endswith(".wandb"):
                    path = os.path.join(root, fn)
        with open(path, "rb") as f:
            data = f.read()
        cols: dict = {}
        rec = pb.Record()
        block, pos, n, buf = 32768, 7, len(data), b""
        while pos + 7 <= n:
            left = block - (pos % block)
            if left < 7:
                pos += left
                continue
            _crc, length, kind = struct.unpack_from("<IHB", data, pos)
            frag = data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 2):        # FULL or FIRST
                buf = frag
            else:                     # MIDDLE or LAST
                buf += frag
            if kind in (1, 4):
                rec.ParseFromString(buf)
                if rec.WhichOneof("record_type") == "history":
                    h = {it.key or "/".join(it.nested_key): it.value_json for it in rec.history.item}
                    step = int(h.pop("_step", "0"))
                    t = float(h.pop("_timestamp", "0"))
                    h.pop("_runtime", None)
                    for k, v in h.items():
                        cols.setdefault(k, []).append((step, t, float(v)))
            if kind == 0 and length == 0:
                break
        dt = time.perf_counter() - t0
        return sum(len(c) for c in cols.values()), dt


class Mlflow(Peer):
    synchronous = True

    def open(self, base):
        import mlflow
        self.mlflow = mlflow
        mlflow.set_tracking_uri("file://" + os.path.join(base, "mlruns"))
        self.run = mlflow.start_run()
        log_metrics, sync = mlflow.log_metrics, self.synchronous

        def log(metrics, step=None):
            log_metrics(metrics, step=step, synchronous=sync)
        self.log = log

    def settle(self):
        if not self.synchronous:
            self.mlflow.flush_async_logging()
        time.sleep(0.05)

    def close(self):
        self.mlflow.end_run()   # flushes pending async logging

    def read(self):
        from mlflow import MlflowClient
        t0 = time.perf_counter()
        client = MlflowClient()
        run = client.get_run(self.run.info.run_id)
        total = 0
        for key in run.data.metrics:
            hist = client.get_metric_history(self.run.info.run_id, key)
            cols = ([m.step for m in hist], [m.timestamp for m in hist], [m.value for m in hist])
            total += len(cols[0])
        dt = time.perf_counter() - t0
        return total, dt


class MlflowAsync(Mlflow):
    synchronous = False


class Trackio(Peer):
    def open(self, base):
        import trackio
        self.trackio = trackio
        self.project = "bench-" + os.path.basename(base)
        self.run = trackio.init(project=self.project, embed=False,
                                auto_log_gpu=False, auto_log_cpu=False)
        self.log = self.run.log

    def close(self):
        self.run.finish()

    def read(self):
        from trackio.sqlite_storage import SQLiteStorage
        t0 = time.perf_counter()
        logs = SQLiteStorage.get_logs(self.project, self.run.name)
        cols: dict = {}
        for r in logs:
            for k, v in r.items():
                if k not in ("step", "timestamp") and isinstance(v, (int, float)):
                    cols.setdefault(k, []).append((r["step"], v))
        dt = time.perf_counter() - t0
        return sum(len(c) for c in cols.values()), dt


PEERS = {
    "noop": NoOp, "expman": Expman, "expman-rs": ExpmanRs, "jsonl-orjson": JsonlOrjson,
    "tensorboardX": TensorboardX, "wandb-offline": Wandb, "mlflow-sync": Mlflow,
    "mlflow-async": MlflowAsync, "trackio": Trackio,
}


# ---- the workloads ---------------------------------------------------------------

def tight(log, n: int, nkeys: int) -> tuple[float, float]:
    """ns per call, net of building the dict (the same loop without the call):
    wall clock, and this thread's CPU time (blind to time spent descheduled, so
    steadier on a shared machine, and blind to work a peer does in other threads)."""
    tc = time.thread_time_ns
    if nkeys == 2:
        c0, t0 = tc(), pc()
        for i in range(n):
            log({"loss": 0.5, "acc": 0.25}, step=i)
        c1, t1 = tc(), pc()
        for i in range(n):
            {"loss": 0.5, "acc": 0.25}
        c2, t2 = tc(), pc()
    else:
        vals = [float(i) for i in range(20)]
        keys = KEYS20
        c0, t0 = tc(), pc()
        for i in range(n):
            log(dict(zip(keys, vals)), step=i)
        c1, t1 = tc(), pc()
        for i in range(n):
            dict(zip(keys, vals))
        c2, t2 = tc(), pc()
    return ((t1 - t0) - (t2 - t1)) / n, ((c1 - c0) - (c2 - c1)) / n


def spaced(log, n: int, k: int, step0: int) -> float:
    """Median ns of one call timed alone between ~20 us of work, less the timer's cost."""
    samples, base = [], []
    for i in range(n):
        busy(k)
        d = {"loss": 0.5, "acc": 0.25}
        t0 = pc()
        log(d, step=step0 + i)
        t1 = pc()
        samples.append(t1 - t0)
        busy(k)
        t0 = pc()
        t1 = pc()
        base.append(t1 - t0)
    return statistics.median(samples) - statistics.median(base)


def loop(log, n: int, k: int, step0: int) -> float:
    """A CPU-bound pure-Python loop; log=None runs it without logging. Seconds."""
    t0 = pc()
    if log is None:
        for i in range(n):
            loss = busy(k) * 1e-9
            acc = 0.5
    else:
        for i in range(n):
            loss = busy(k) * 1e-9
            acc = 0.5
            log({"loss": loss, "acc": acc}, step=step0 + i)
    return (pc() - t0) / 1e9


def clamp(x: float, lo: int, hi: int) -> int:
    return int(max(lo, min(hi, x)))


def phase_timing(peer: Peer, a: dict) -> dict:
    budget, reps, k = a["budget"], a["repeats"], a["busy_k"]
    step = 0
    # calibrate: a short run gives a per-call estimate that sizes every loop
    t0 = pc()
    n0 = 0
    while pc() - t0 < 0.05e9 and n0 < 20000:
        peer.log({"loss": 0.5, "acc": 0.25}, step=step)
        step += 1
        n0 += 1
    est = max((pc() - t0) / n0, 30.0)
    peer.settle()
    per_rep = budget / reps * 1e9
    n2 = clamp(per_rep / est, 20, a["max_calls"])
    out = {"calib_ns": est}
    r2, r20, rs = [], [], []
    for _ in range(reps):
        r2.append(tight(peer.log, n2, 2))
        peer.settle()
    out["tight2_ns"], out["tight2_calls"] = statistics.median(x[0] for x in r2), n2
    out["tight2_cpu_ns"] = statistics.median(x[1] for x in r2)
    n20 = clamp(per_rep / (est * 8), 10, a["max_calls"] // 4)
    for _ in range(reps):
        r20.append(tight(peer.log, n20, 20))
        peer.settle()
    out["tight20_ns"], out["tight20_calls"] = statistics.median(x[0] for x in r20), n20
    out["tight20_cpu_ns"] = statistics.median(x[1] for x in r20)
    # spaced: each call costs est + ~2*20 us of work
    ns = clamp(per_rep / (est + 40_000), 20, a["max_calls"] // 20)
    step = 10 ** 9
    for _ in range(reps):
        rs.append(spaced(peer.log, ns, k, step))
        step += ns
        peer.settle()
    out["spaced_ns"], out["spaced_calls"] = statistics.median(rs), ns
    # slowdown: many short baseline/logged pairs, order alternating, median of the
    # per-pair ratios (a shared, noisy machine drifts less within one pair)
    step_ns = a["busy_ns"]
    pairs = reps * 5
    per_pair = budget / pairs * 1e9
    nl = clamp(min(per_pair / 2 / step_ns, per_pair / (step_ns + est)), 20, a["max_calls"])
    ratios, base, logged = [], [], []
    step = 2 * 10 ** 9
    for j in range(pairs):
        if j % 2:
            lg = loop(peer.log, nl, k, step)
            b = loop(None, nl, k, 0)
        else:
            b = loop(None, nl, k, 0)
            lg = loop(peer.log, nl, k, step)
        step += nl
        base.append(b)
        logged.append(lg)
        ratios.append(lg / b)
    peer.settle()
    out["loop_base_s"], out["loop_logged_s"] = statistics.median(base), statistics.median(logged)
    out["slowdown_pct"] = (statistics.median(ratios) - 1) * 100
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [ratios[0], 0, ratios[-1]]
    out["slowdown_iqr_pct"] = ((q[0] - 1) * 100, (q[2] - 1) * 100)
    out["loop_steps"], out["loop_pairs"] = nl, pairs
    out["loop_step_ns"] = out["loop_base_s"] * 1e9 / nl
    return out


def phase_close(peer: Peer, a: dict, base: str) -> dict:
    n = a["calls"]
    log = peer.log
    t0 = pc()
    for i in range(n):
        log({"loss": 0.5 + i, "acc": 0.25}, step=i)
    t_log = (pc() - t0) / 1e9
    t0 = pc()
    peer.close()
    close_s = (pc() - t0) / 1e9
    time.sleep(0.1)  # let any detached process finish its files
    points, read_s = peer.read()
    return {"calls": n, "points_logged": 2 * n, "log_s": t_log, "close_s": close_s,
            "points_read": points, "bytes": dir_bytes(base)}


def phase_read(peer: Peer, a: dict) -> dict:
    n = a["calls"]
    log = peer.log
    vals = [float(i) for i in range(20)]
    keys = KEYS20
    t0 = pc()
    for i in range(n):
        vals[0] = float(i)
        log(dict(zip(keys, vals)), step=i)
    t_log = (pc() - t0) / 1e9
    peer.close()
    times, points = [], None
    for _ in range(a["repeats"]):
        points, dt = peer.read()
        if dt is None:
            break
        times.append(dt)
    return {"calls": n, "points_logged": 20 * n, "log_s": t_log, "points_read": points,
            "read_s": statistics.median(times) if times else None}


def phase_memory(peer: Peer, a: dict) -> dict:
    n = a["calls"]
    rss0 = rss_mb()
    log = peer.log
    vals = [float(i) for i in range(20)]
    keys = KEYS20
    for i in range(n):
        log(dict(zip(keys, vals)), step=i)
    rss_logged = rss_mb()
    peer.close()
    return {"calls": n, "rss_start_mb": rss0, "rss_after_log_mb": rss_logged,
            "rss_peak_mb": rss_mb()}


def _cliff_builders() -> tuple[dict, list[str]]:
    """label -> (keys, function returning a new dict per call, literal label)."""
    prefix = "train"
    vals = [float(i) for i in range(20)]
    keys20 = KEYS20
    out = {
        "2 literal": (2, lambda: {"loss": 0.5, "acc": 0.25}, None),
        "2 f-string": (2, lambda: {f"{prefix}/loss": 0.5, f"{prefix}/acc": 0.25}, "2 literal"),
        "2 python int": (2, lambda: {"loss": 5, "acc": 2}, "2 literal"),
        "20 literal": (20, lambda: dict(zip(keys20, vals)), None),
        "20 f-string": (20, lambda: {f"{prefix}/m{j}": v for j, v in enumerate(vals)},
                        "20 literal"),
    }
    notes = []
    try:
        import numpy as np
    except ImportError:
        notes.append("numpy cases skipped: numpy is not installed in this venv")
    else:
        for label, a, b in (("2 numpy.float64", np.float64(0.5), np.float64(0.25)),
                            ("2 numpy.float32", np.float32(0.5), np.float32(0.25)),
                            ("2 numpy.int64", np.int64(5), np.int64(2))):
            out[label] = (2, (lambda a=a, b=b: {"loss": a, "acc": b}), "2 literal")
    return out, notes


def phase_cliffs(peer: Peer, a: dict) -> dict:
    """Thread-CPU ns per call on dicts built before the clock, and per case the median of
    per-pair ratios to its literal case (timed back to back, order alternating)."""
    cases, notes = _cliff_builders()
    tc = time.thread_time_ns
    log = peer.log
    step = [0]
    for label in list(cases):            # a peer that refuses a value type: say so
        try:
            log(cases[label][1](), step=0)
        except Exception as e:
            notes.append(f"{label}: {type(e).__name__}: {str(e)[:80]}")
            del cases[label]

    def net(build, n: int) -> float:
        # dicts built before the clock (fresh key objects each, as a real loop
        # makes), logged in turn, net of the same loop without the call: the
        # build's own cost and noise stay out (bench/hotpath.py tight_built)
        batch = [build() for _ in range(256)]
        s0 = step[0]
        c0 = tc()
        for i in range(n):
            log(batch[i & 255], step=s0 + i)
        c1 = tc()
        for i in range(n):
            batch[i & 255]
        c2 = tc()
        step[0] += n
        return ((c1 - c0) - (c2 - c1)) / n

    # size the loops from a short calibration of the literal 2-key case
    t0 = pc()
    net(cases["2 literal"][1], 200)
    est = max((pc() - t0) / 400, 30.0)
    pairs = a["pairs"]
    n2 = clamp(a["budget"] / (len(cases) * pairs * 2) * 1e9 / est, 20, a["max_calls"])
    per: dict[str, list[float]] = {k: [] for k in cases}
    ratios: dict[str, list[float]] = {k: [] for k in cases if cases[k][2]}
    for r in range(pairs):
        for label, (nkeys, build, ref) in cases.items():
            n = n2 if nkeys == 2 else max(n2 // 6, 10)
            if ref is None:
                per[label].append(net(build, n))
                continue
            order = [(label, build), (ref, cases[ref][1])]
            got = {lab: net(fn, n) for lab, fn in (order if r % 2 else order[::-1])}
            per[label].append(got[label])
            ratios[label].append(got[label] / got[ref] if got[ref] > 0 else float("nan"))
        peer.settle()
    return {"ns": {k: statistics.median(v) for k, v in per.items()},
            "ratio": {k: statistics.median(v) for k, v in ratios.items()},
            "calls_2keys": n2, "pairs": pairs, "notes": notes}


def main() -> None:
    name, phase = sys.argv[1], sys.argv[2]
    args = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    peer = PEERS[name]()
    with tempfile.TemporaryDirectory(prefix="expman-bench-") as base:
        os.environ.setdefault("TRACKIO_DIR", os.path.join(base, "trackio"))
        real_stdout = sys.stdout
        sys.stdout = sys.stderr     # peers' chatter goes to stderr; stdout carries the result
        t0 = time.perf_counter()
        peer.open(base)
        open_s = time.perf_counter() - t0
        gc.collect()
        gc.disable()
        if phase == "timing":
            out = phase_timing(peer, args)
            t0 = time.perf_counter()
            peer.close()
            out["close_s"] = time.perf_counter() - t0
        elif phase == "close":
            out = phase_close(peer, args, base)
        elif phase == "read":
            out = phase_read(peer, args)
        elif phase == "memory":
            out = phase_memory(peer, args)
        elif phase == "cliffs":
            out = phase_cliffs(peer, args)
            peer.close()
        else:
            raise SystemExit(f"unknown phase {phase}")
        gc.enable()
        out["open_s"] = open_s
        out["python"] = sys.version.split()[0]
        out["loadavg"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        sys.stdout = real_stdout
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
