"""The PyTorch loader over Delta tables (the loader issue builds it)."""
