"""Framework integrations: each module imports its framework inside, so `import expman` never loads one."""
