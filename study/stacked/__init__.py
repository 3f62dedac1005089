"""The stacked engine: E runs of one configuration trained together in one process, with the
weights of their networks stacked along a leading member axis (exactly SB3's math per member)."""
