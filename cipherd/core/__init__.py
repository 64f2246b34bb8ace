"""
The shared vocabulary: what mail is (L{envelope}), its header block
(L{headers}), address rules (L{addresses}) and dates from the reactor's
clock (L{clock}).  Every layer imports it; it imports no other part of
cipherd (see the README's layout section for the layers).
"""
