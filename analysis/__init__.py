"""The numbers behind every view: spectra, alignment (SAR), NAI, correlations, sweeps, the
on-disk result store and plotly figure builders. Plain functions over tensors and DataFrames;
imports ``merging`` and ``zoo``, never streamlit."""
