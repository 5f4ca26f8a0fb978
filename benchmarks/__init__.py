"""A reproducible benchmark suite: sa_references side by side with its peer and hand-written SQL.

Run it with ``python -m benchmarks`` (SQLite in a temporary file) and add
servers with ``--dburi URL`` (repeatable)::

    python -m benchmarks \\
        --dburi postgresql+psycopg://postgres@127.0.0.1:5432/test_bench \\
        --dburi mysql+pymysql://root@127.0.0.1:3306/test_bench

Everything runs in one process: the schema and data are generated
(:mod:`benchmarks.schema`), the contenders (:mod:`benchmarks.contenders`) are
measured case by case (:mod:`benchmarks.cases`, :mod:`benchmarks.measure`),
and the results are printed as Markdown tables and written as JSON
(:mod:`benchmarks.report`, default ``benchmarks/results/latest.json``).
``python -m benchmarks --help`` lists the options.
"""
