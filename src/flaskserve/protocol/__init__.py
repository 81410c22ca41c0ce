"""Transport: HTTP routes and codecs. Nothing here knows which ML library a model uses."""
