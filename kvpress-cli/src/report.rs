//! What a press kept, as data for the web page of `kvpress serve` and `kvpress inspect --html`:
//! the context's tokens and, per layer and KV head, a bitmask of the kept context positions.

use kvpress_core::KvCache;
use kvpress_models::tokenizer::TextTokenizer;
use serde_json::{Value, json};

use crate::backend::Backend;

/// The page served at `/` and written by `inspect --html` (self-contained: inline CSS and JS).
pub const PAGE: &str = include_str!("serve/page.html");

/// The placeholder of [`PAGE`] replaced by the embedded data of a standalone report.
const DATA_PLACEHOLDER: &str = "<!--KVPRESS_DATA-->";

/// `{"context_tokens", "tokens", "layers", "heads", "kept"}`: each context token's text and, per
/// layer and KV head, the kept context positions as a hex bitmask (byte `j` = hex digits
/// `2j..2j+2`, bit `b` of byte `j` = position `8j + b`, kvpress's golden format).
pub fn kept_map(
    tokenizer: &TextTokenizer,
    context_ids: &[u32],
    cache: &KvCache<Backend>,
) -> anyhow::Result<Value> {
    let n = context_ids.len();
    let tokens = context_ids
        .iter()
        .map(|&id| tokenizer.decode(&[id], false))
        .collect::<Result<Vec<_>, _>>()?;
    let mut kept = Vec::with_capacity(cache.num_layers());
    let mut heads = 0;
    for l in 0..cache.num_layers() {
        let layer = cache
            .layer(l)
            .ok_or_else(|| anyhow::anyhow!("the cache has no layer {l}"))?;
        heads = layer.original_positions().len();
        kept.push(
            layer
                .original_positions()
                .iter()
                .map(|positions| bitmask_hex(positions, n))
                .collect::<Vec<_>>(),
        );
    }
    Ok(json!({
        "context_tokens": n,
        "tokens": tokens,
        "layers": cache.num_layers(),
        "heads": heads,
        "kept": kept,
    }))
}

/// Positions below `n` as a little-endian bitmask in hex.
fn bitmask_hex(positions: &[usize], n: usize) -> String {
    let mut bytes = vec![0u8; n.div_ceil(8)];
    for &p in positions.iter().filter(|&&p| p < n) {
        bytes[p / 8] |= 1 << (p % 8);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The page with `data` embedded: a standalone report that makes no request.
pub fn standalone_page(data: &Value) -> anyhow::Result<String> {
    // `</` cannot appear inside the script element
    let json = serde_json::to_string(data)?.replace("</", "<\\/");
    let script = format!("<script>window.KVPRESS_DATA = {json};</script>");
    if !PAGE.contains(DATA_PLACEHOLDER) {
        anyhow::bail!("the page has no data placeholder");
    }
    Ok(PAGE.replacen(DATA_PLACEHOLDER, &script, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmasks_follow_kvpress_layout() {
        assert_eq!(bitmask_hex(&[0, 3, 9], 12), "0902");
        assert_eq!(bitmask_hex(&[], 3), "00");
        assert_eq!(
            bitmask_hex(&[7, 40], 8),
            "80",
            "positions past the context are left out"
        );
    }
}
