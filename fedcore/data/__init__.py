"""Datasets: tables, partitions and splits, batching, chat formatting, embedded assets."""
