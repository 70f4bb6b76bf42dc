"""Statistics of the answers: intervals, paired tests with multiple-testing correction, agreement
between raters. Pure functions on arrays and tables (numpy, scipy, statsmodels, krippendorff); no
model, no run directory. Import the submodules directly."""
