"""The causal variant: popularity as a confounder (weights, priors, propensities), counterfactual tuning, reason-then-recommend."""
