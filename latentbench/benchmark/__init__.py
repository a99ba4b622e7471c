"""Metrics, protocols, the bench harness and the leaderboard writer."""
