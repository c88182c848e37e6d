"""The Slurm backend: ``options`` (resources), ``queue`` (one structured query of job states),
``job`` (the checkpointable callable a Slurm task runs) and ``executor`` (submission, re-run
decisions, waiting). Nothing heavy is imported here: ``queue`` alone serves ``prunebench status``."""
