"""Media for the media task types: the store that serves results, ffmpeg, bounded downloads, scratch space."""
