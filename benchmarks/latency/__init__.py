"""The parts of ``duorank bench latency`` (:mod:`benchmarks.bench_latency` puts them together):
the configurations it times (:mod:`.configs`), the child processes that time them
(:mod:`.harness`), quality on the ranker's validation lists (:mod:`.quality`) and the measure of
two orders' agreement (:mod:`.agreement`); and ``bench serving``'s light HTTP load generator
(:mod:`.loadgen`)."""
