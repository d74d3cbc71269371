"""The dashboard's static files (HTML, CSS, JS), served by `taskd.http.dashboard`; no build step."""
