"""What runs leave on disk and read back, below both the trainer and the hub: atomic,
checksummed checkpoints (`checkpoint`), the run's vocabulary file (`vocab`) and the lock
of a folder in use (`runlock`). `bert_ipu.train` writes and resumes through it,
`bert_ipu.hub` reads models from it."""
