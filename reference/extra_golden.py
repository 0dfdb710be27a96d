"""Extra kvpress goldens for kvpress-rs: the 0.5 configurations at 0.25/0.75, and presses that the
shared golden lacks, at 0.25/0.5/0.75. Same harness as make_golden.py (imported)."""
import sys
import make_golden as M

BASE = list(M.PRESS_NAMES)
EXTRA = ["KeyRerotationPress(SnapKVPress)", "ChunkKVPress(SnapKVPress)", "BlockPress(KeyDiffPress)",
         "LagKVPress", "CriticalAdaKVPress(ExpectedAttentionPress)", "CriticalAdaKVPress(SnapKVPress)",
         "PerLayerCompressionPress(KnormPress)"]
orig = M.make_press


def make_press(name, r):
    import kvpress as K
    if name == "KeyRerotationPress(SnapKVPress)": return K.KeyRerotationPress(K.SnapKVPress(compression_ratio=r))
    if name == "ChunkKVPress(SnapKVPress)": return K.ChunkKVPress(K.SnapKVPress(compression_ratio=r))
    if name == "BlockPress(KeyDiffPress)": return K.BlockPress(K.KeyDiffPress(compression_ratio=r))
    if name == "LagKVPress": return K.LagKVPress(compression_ratio=r)
    if name == "CriticalAdaKVPress(ExpectedAttentionPress)":
        return K.CriticalAdaKVPress(K.ExpectedAttentionPress(compression_ratio=r))
    if name == "CriticalAdaKVPress(SnapKVPress)":
        return K.CriticalAdaKVPress(K.SnapKVPress(compression_ratio=r))
    if name == "PerLayerCompressionPress(KnormPress)":
        return K.PerLayerCompressionPress(K.KnormPress(), [round(r * (0.5 + l / 29), 4) for l in range(30)])
    return orig(name, r)


M.make_press = make_press
which = sys.argv[1]
if which == "base":
    M.RATIOS = [0.25, 0.75]
    M.PRESS_NAMES = [n for n in BASE if n != "QFilterPress"]
else:
    M.RATIOS = [0.25, 0.5, 0.75]
    M.PRESS_NAMES = EXTRA
sys.argv = [sys.argv[0], "presses"]
M.run_presses_golden()
