"""`lfmq bench`: benchmark cases (each in a fresh process), the typed report object, its JSON / Markdown / HTML
renderings and charts, and comparisons of two reports. Device profiles and predictions live in lfmq.devices."""
