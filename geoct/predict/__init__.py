"""Streaming, blended, exactly georeferenced prediction of scenes of any size."""
