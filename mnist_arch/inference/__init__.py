"""Using a trained net: found from a run dir or a checkpoint (trained.py), scored again (scoring.py), reading
digits (reading.py), exported to other formats and those run (formats.py), tried in the browser (server.py).
The commands (mnist_arch/commands/evaluate.py, predict.py, export.py, serve.py) parse, call these and print."""
