"""What runs leave behind and how they are compared: summary.json (record.py), where a result came from
(provenance.py), the layer table (layer_table.py), each epoch's numbers (history.py), the per-run plots
(plots.py), TensorBoard's tabs (tensorboard.py), the leaderboard (leaderboard.py)."""
