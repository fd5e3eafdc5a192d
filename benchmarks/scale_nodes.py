"""Does a simulated federation's cost grow with the number of idle nodes? 10, 100 and 1000 SuperNodes,
the same 10 clients sampled per round.

Each federation runs in its own process on Flower's Ray engine (``tests/simulate.py``: one CPU per client
actor, two actors on this 2-core machine), FedLoRA on MiniLM, 2 rounds x 2 local steps of 8 examples,
the default data split into as many IID partitions as nodes. Measured per node count: start-up (the
server's ``startup_s``: waiting for the nodes and asking every one of them for its partition and
device), the wall time of round 2 (the actors are warm by then),
and the peak RSS of the server process (ServerApp, simulated nodes and Ray driver) and of its whole
process tree (with Ray's own processes and the client actors), sampled every 0.5 s.

    python benchmarks/scale_nodes.py            # -> benchmarks/results/scale_nodes.{md,json}
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from benchlib import MINILM, RESULTS, command_line, header, machine, table, write_results

from fedcore.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
PER_ROUND = 10


def run_config(nodes: int, out: Path) -> dict:
    return RunConfig.from_flat(
        {
            "model.name": MINILM,
            "model.max-length": 32,
            "data.partition": "iid",
            "clients.num-partitions": nodes,
            "clients.per-round": PER_ROUND,
            "clients.min": PER_ROUND,
            "train.local-steps": 2,
            "train.batch-size": 8,
            "eval.max-examples": 64,
            "rounds": 2,
            "output.dir": str(out),
        }
    ).to_flat()


def tree_rss_mb(process: psutil.Process) -> tuple[float, float]:
    """(RSS of the process, RSS of it and all its descendants) in MB."""
    own = total = 0.0
    try:
        own = total = process.memory_info().rss / 2**20
        for child in process.children(recursive=True):
            try:
                total += child.memory_info().rss / 2**20
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return own, total


def measure(nodes: int, work: Path) -> dict:
    config = work / f"config-{nodes}.json"
    config.write_text(json.dumps(run_config(nodes, work / f"out-{nodes}")))
    began = time.perf_counter()
    command = [sys.executable, str(ROOT / "tests" / "simulate.py"), str(config), str(nodes)]
    proc = subprocess.Popen(command, cwd=ROOT)  # client actors import the apps from the repository root
    watched = psutil.Process(proc.pid)
    peak_server = peak_tree = 0.0
    while proc.poll() is None:
        own, total = tree_rss_mb(watched)
        peak_server, peak_tree = max(peak_server, own), max(peak_tree, total)
        time.sleep(0.5)
    if proc.returncode:
        raise RuntimeError(f"the {nodes}-node federation failed (exit {proc.returncode})")
    (run_dir,) = (work / f"out-{nodes}").iterdir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = {r["round"]: r for r in rows if r["kind"] == "global"}
    summary = json.loads((run_dir / "summary.json").read_text())
    clients = [r for r in rows if r["kind"] == "client"]
    return {
        "nodes": nodes,
        "startup_s": summary["startup_s"],
        "nodes_ready": summary["nodes_ready"],
        "round_2_wall_s": rounds[2]["round_wall_time_s"],
        "clients_ok": sum(r["status"] == "ok" for r in clients),
        "peak_server_rss_mb": peak_server,
        "peak_tree_rss_mb": peak_tree,
        "process_wall_s": time.perf_counter() - began,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", default="10,100,1000")
    args = parser.parse_args(argv)
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for nodes in (int(n) for n in args.nodes.split(",")):
            results.append(measure(nodes, Path(tmp)))
            print(results[-1], flush=True)
    base = results[0]
    markdown = header(
        "Simulated federations of 10 to 1000 nodes, 10 clients per round", info, command_line(), False
    )
    markdown += (
        "FedLoRA on MiniLM, 2 rounds x 2 steps of 8 examples, 10 clients sampled per round, IID partitions; "
        "one process per federation on Flower's Ray engine (2 client actors of 1 CPU). Start-up: waiting "
        "for the nodes and the info query to every node (summary.json's startup_s). Ratios against the "
        f"{base['nodes']}-node run.\n\n"
        + table(
            [
                "nodes",
                "start-up s",
                "round 2 wall s",
                "round 2 vs first",
                "server peak RSS MB",
                "all processes peak RSS MB",
                "extra MB vs first",
                "clients ok",
            ],
            [
                [
                    r["nodes"],
                    f"{r['startup_s']:.1f}",
                    f"{r['round_2_wall_s']:.1f}",
                    f"{r['round_2_wall_s'] / base['round_2_wall_s']:.2f}x",
                    f"{r['peak_server_rss_mb']:.0f}",
                    f"{r['peak_tree_rss_mb']:.0f}",
                    f"{r['peak_tree_rss_mb'] - base['peak_tree_rss_mb']:+.0f}",
                    r["clients_ok"],
                ]
                for r in results
            ],
        )
        + "\n"
    )
    print(markdown)
    write_results(
        "scale_nodes", RESULTS, markdown, {"machine": info, "command": command_line(), "results": results}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
