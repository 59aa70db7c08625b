"""`mailroom bench`: Mailroom's throughput, latency, CPU and memory against its limit and a hand-written peer.

Every variant runs over the same generated documents (models.generator: `--docs`, `--scan-share`):

| variant                | what runs                                                                              |
|------------------------|----------------------------------------------------------------------------------------|
| limit                  | the champions in onnxruntime, in batches of ScoringConfig.batch_size, inputs           |
|                        | precomputed                                                                            |
| stages                 | where a document's time goes: the scoring logic's stages timed in plain Python (no     |
|                        | Kafka, nothing cached), beside the scoring job's CPU ms per document at p1             |
| router                 | `jobs.router --bounded` over a pre-filled documents topic: text-only, scans-only, and  |
|                        | the same scans as colour PNGs (decoded and re-encoded: the path before decode-once)    |
| reading                | the same routed pages read by the `tesseract` command line (a process per page: the    |
|                        | limit) and by the scan reader in one process (engine loaded); then mailroom-scans:     |
|                        | `jobs.scoring` over the scans alone at each p (OCR is most of its work), nothing cached |
| peer                   | what a user would write instead: a kafka-python loop (`PeerScorer`) from the routed    |
|                        | topics to the department topics + predictions; at-least-once, sender state in a dict,  |
|                        | p processes                                                                            |
| mailroom               | `jobs.scoring` on the embedded MiniCluster at `--parallelism p`: exactly-once,         |
|                        | checkpointed, scans read by OCR (nothing cached)                                       |
| mailroom-at-least-once | the same job with `--delivery at-least-once`: output visible without waiting for the   |
|                        | checkpoint that commits it                                                             |
| mailroom-cluster       | the same job submitted to a session cluster of its own with p TaskManager processes,   |
|                        | one slot each (the Flink way to use more cores: a Python interpreter per process)      |
| mailroom-no-ocr        | the same job with `--no-ocr`: the layout model decides every scan (fallback-only path) |
| mailroom-shadow        | the same job, each kind's champion also deployed as its challenger at sample 1.0       |
|                        | (`mailroom.control.deploy`): every document scored twice, paired on shadow-predictions |
| deploy                 | the running scoring job at p (under half mailroom's sustained rate, if measured; else  |
|                        | idle): `--deploys` text champion deploys alternating two versions (a copy of the       |
|                        | champion registered as another one), each timed until every subtask serves it          |

After the results table, a table of the figures to reach (issue 13): each a ratio of rows of this run (or a p99),
and the whole stack's peak memory from the latest `make run` (which records it in the run directory).

How it measures (one Flink job at a time: the machines here have 2 cores):
- throughput: over a pre-filled backlog, records per second between the 10th and 90th
  percentile of the records' own processing timestamps (`scored_ms` of predictions,
  `routed_ms` of routed documents): job start-up, stragglers and the last commit are left out.
- latency: then a paced producer offers half that rate, stamping `received_ms` at send time;
  latency = arrival at a read_committed consumer of the department topics - `received_ms`, so
  Mailroom's figures include the wait for the checkpoint that commits its transactions.
  "p99 text/scans" is the p99 of each kind alone. --checkpoint-interval-ms, --buffer-timeout-ms
  and --max-batch-delay-ms (several values each) sweep the job's latency knobs: every combination.
- CPU seconds and peak RSS: psutil samples of the variant's process trees (the job's Python
  client, its JVM and any Python workers; the peer's processes). The broker is not counted.
- shadow cost: mailroom's throughput over mailroom-shadow's, and mailroom-shadow's p99 over
  mailroom's (each at half its own sustained rate), per parallelism; the challenger is serving
  on every subtask before the backlog is sent, and the shadow-predictions topic must then hold
  one pair per document scored.
- reading: pages per CPU second of each reader's own processes (for the scoring job: its whole
  process tree in the throughput window, so Kafka I/O and scoring count against it); the job's
  p2 rate over its p1 rate.
- deploy to serving: from the champion record's send (its Kafka timestamp) to each subtask's
  SERVING report on model-events (its at_ms), and to that report's arrival at a read_committed
  consumer (after the checkpoint that commits it); min/median/max over the deploys.

Peer and mailroom read the same routed documents, routed beforehand in plain Python by
udfs.routing (the router job is measured on its own). Each variant gets a fresh topic prefix,
deleted afterwards, and its own run directory (checkpoints) under the output directory; the
variants that deploy get a copy of the registry there (a champion deploy moves the registry's
champion). All of them use the configured stack's Kafka and Redis (MAILROOM_KAFKA_PORT,
MAILROOM_REDIS_PORT): point those at a stack of the bench's own to keep it off a shared one. The
scoring job mirrors sender features into the stack's Redis, as it does in production.

`python -m mailroom.bench --group-id G` runs one peer process (topics from the environment,
as `mailroom.submit.job_command` sets it).
"""

from mailroom.bench.cli import register

__all__ = ["register"]
