"""Issue 14.16: an event's seq goes on after a resume instead of restarting at 0."""

from __future__ import annotations

from expman.layout import EVENTS_FILE, parse_event_lines


def test_event_seq_continues_after_resume(make_run) -> None:
    exp = make_run(run_name="r")
    for step in range(5):
        exp.log_metrics({"loss": float(step)}, step=step)
    exp.info("five records in")
    exp.close()
    again = make_run(run_name="r", resume=True)
    again.info("resumed")
    again.log_metrics({"loss": 9.0})
    again.info("six records in")
    again.close()
    events = parse_event_lines((again.run_dir / EVENTS_FILE).read_bytes())[0]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    messages = {e["msg"]: e["seq"] for e in events if e["kind"] == "message"}
    assert messages == {"five records in": 5, "resumed": 5, "six records in": 6}
    assert events[-1]["status"] == "FINISHED" and events[-1]["seq"] == 6
