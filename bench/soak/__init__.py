"""Soak and fault benchmark (issue 11, item 7): ``python -m bench.soak`` / ``make soak``.

Mixed traffic over the three tasks from 64 concurrent clients for a configurable time, against the local
stack (started here by ``serving.stack.LocalStack``, or a running ``make run``), while Triton is frozen
(SIGSTOP) for a window and later killed (SIGKILL) so that the stack's supervisor restarts it. The report
(``bench/results/soak/``) gives status counts per phase, latency outside the fault windows, requests lost
(no answer within the client's deadline), and the RSS of every process of the stack over time; the exit
status is non-zero when issue 11's done-criteria fail.

Rooms: :mod:`~bench.soak.timeline` (schedule, phases, which phase a request belongs to),
:mod:`~bench.soak.traffic` (clients, uploads, outcomes), :mod:`~bench.soak.rss` (``/proc`` sampling, growth),
:mod:`~bench.soak.findings` (counts per phase, latency, memory growth, the pass/fail rules),
:mod:`~bench.soak.report` (markdown, JSON, CSVs, plot), :mod:`~bench.soak.run` (the run itself), ``__main__``
(the command line).
"""
