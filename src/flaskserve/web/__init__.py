"""Human front doors: the index, the classic greeting route and (later) the playground."""
