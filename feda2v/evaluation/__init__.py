"""Measuring and rendering only: generator quality and privacy metrics, results tables, the
HTML report. (The experiment runner that produces what they measure is orchestration's.)"""
