"""The dispatcher: the loop that claims due launches and calls amoCRM (`loop`), and
where its access token comes from (`tokens`)."""
