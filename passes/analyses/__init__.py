"""Analyses: facts about a graph that passes and instruments read (costs, dependency groups)."""
