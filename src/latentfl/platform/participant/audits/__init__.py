"""The participant's side of audits: the one-shot audit client beside the agent (``client``)
and the audits operators request, run or declined as the site's policy says (``requested``)."""
