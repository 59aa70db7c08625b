"""`mailroom bench`: Mailroom's throughput, latency, CPU and memory against its limit and a hand-written peer.

Every variant runs over the same generated documents (models.generator: `--docs`, `--scan-share`):

| variant  | what runs                                                                                   |
|----------|---------------------------------------------------------------------------------------------|
| limit    | the champions in onnxruntime, in batches of ScoringConfig.batch_size, inputs precomputed    |
| router   | `jobs.router --bounded` over a pre-filled documents topic: text-only, then scans-only       |
| peer     | what a user would write instead: a kafka-python loop (`PeerScorer`) from the routed topics  |
|          | to the department topics + predictions; at-least-once, sender state in a dict, p processes  |
| mailroom | `jobs.scoring` on the embedded MiniCluster at `--parallelism p`: exactly-once, checkpointed |

How it measures (one Flink job at a time: the machines here have 2 cores):
- throughput: over a pre-filled backlog, records per second between the 10th and 90th
  percentile of the records' own processing timestamps (`scored_ms` of predictions,
  `routed_ms` of routed documents): job start-up, stragglers and the last commit are left out.
- latency: then a paced producer offers half that rate, stamping `received_ms` at send time;
  latency = arrival at a read_committed consumer of the department topics - `received_ms`, so
  Mailroom's figures include the wait for the checkpoint that commits its transactions.
- CPU seconds and peak RSS: psutil samples of the variant's process trees (the job's Python
  client, its JVM and any Python workers; the peer's processes). The broker is not counted.

Peer and mailroom read the same routed documents, routed beforehand in plain Python by
udfs.routing (the router job is measured on its own). Each variant gets a fresh topic prefix,
deleted afterwards, and its own run directory (checkpoints) under the output directory. The
scoring job mirrors sender features into the stack's Redis, as it does in production.

`python -m mailroom.bench --group-id G` runs one peer process (topics from the environment,
as `mailroom.submit.job_command` sets it).
"""

from mailroom.bench.cli import register

__all__ = ["register"]
