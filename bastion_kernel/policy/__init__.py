"""The owner's release policy: pure rules (`rules`) and the lineage that frame verbs keep (`lineage`)."""
