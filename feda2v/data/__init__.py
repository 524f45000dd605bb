"""Datasets and their split over clients: layouts, partitions, audio decoding, the
filterbank, the demo and packaged datasets, downloads."""
