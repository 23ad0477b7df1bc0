"""Using a trained net: found from a run dir or a checkpoint (trained.py), scored again (evaluate.py), read
digits with (predict.py), exported (export.py), tried in the browser (serve.py). The commands of the same
names (mnist_arch/commands/evaluate.py, ...) parse, call these and print."""
