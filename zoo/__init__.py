"""Where models and tasks come from: the embedded digits zoo, real checkpoint folders,
datasets, frozen classification heads and ``evaluate()``. Imports ``merging``, never streamlit."""
