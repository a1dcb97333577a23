"""Analysis of a trained network: filter redundancy, dataset examples."""
