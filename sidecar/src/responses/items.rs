//! The output items this sidecar answered with recently, so that an `item_reference` to one of
//! them can be sent back as the item itself.
//!
//! Why: the Vercel AI SDK's default provider refers to earlier assistant turns by item id
//! (`{"type": "item_reference", "id": "fc_…"}`) instead of repeating them, for instance in every
//! step of a tool loop after the first. The app talks only to its own sidecar, so the items it
//! refers to were answered here. This is not stored conversation state: nothing is kept beyond
//! the items' own JSON, `previous_response_id` and `store: true` stay refused, and a reference
//! this sidecar does not know (restarted, evicted) is a 400 that says so.
//!
//! Bounded: at most [`MAX_ITEMS`] items and [`MAX_BYTES`] of their JSON; the oldest go first.
//! The lock is held only to insert or look up, never across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

/// Items kept at most.
pub const MAX_ITEMS: usize = 4096;
/// Bytes of item JSON kept at most.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Default)]
struct Items {
    by_id: HashMap<String, (Value, usize)>,
    order: VecDeque<String>,
    bytes: usize,
}

fn items() -> &'static Mutex<Items> {
    static ITEMS: OnceLock<Mutex<Items>> = OnceLock::new();
    ITEMS.get_or_init(Mutex::default)
}

/// Keeps an output item (it has an `id`); one larger than a tenth of the bound is not kept.
pub fn remember(item: &Value) {
    if let Ok(mut g) = items().lock() {
        g.remember(item);
    }
}

/// The item answered with this id, if it is still kept.
pub fn recall(id: &str) -> Option<Value> {
    items().lock().ok()?.by_id.get(id).map(|(v, _)| v.clone())
}

impl Items {
    fn remember(&mut self, item: &Value) {
        let Some(id) = item.get("id").and_then(Value::as_str) else {
            return;
        };
        let size = serde_json::to_vec(item).map_or(usize::MAX, |v| v.len() + id.len());
        if size > MAX_BYTES / 10 {
            return;
        }
        if let Some((_, old)) = self.by_id.insert(id.to_owned(), (item.clone(), size)) {
            self.bytes = self.bytes.saturating_sub(old);
        } else {
            self.order.push_back(id.to_owned());
        }
        self.bytes += size;
        while self.order.len() > MAX_ITEMS || self.bytes > MAX_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, s)) = self.by_id.remove(&oldest) {
                self.bytes = self.bytes.saturating_sub(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An item is found by its id; the oldest items go once the count bound is passed, and
    /// the bytes bound holds (a store of its own: the process-wide one is shared by tests).
    #[test]
    fn remembers_within_bounds() {
        let mut s = Items::default();
        let first = json!({"id": "fc_test_first", "type": "function_call", "call_id": "c", "name": "n", "arguments": "{}"});
        s.remember(&first);
        assert_eq!(s.by_id.get("fc_test_first").map(|(v, _)| v), Some(&first));
        for i in 0..MAX_ITEMS {
            s.remember(&json!({"id": format!("msg_test_{i}"), "type": "message"}));
        }
        assert!(!s.by_id.contains_key("fc_test_first"));
        assert!(s.by_id.contains_key(&format!("msg_test_{}", MAX_ITEMS - 1)));
        assert_eq!(s.by_id.len(), MAX_ITEMS);
        s.remember(&json!({"id": "msg_test_huge", "text": "x".repeat(MAX_BYTES)}));
        assert!(!s.by_id.contains_key("msg_test_huge"));
        let big = "x".repeat(MAX_BYTES / 20);
        for i in 0..40 {
            s.remember(&json!({"id": format!("msg_big_{i}"), "text": big}));
        }
        assert!(s.bytes <= MAX_BYTES && s.by_id.len() < 40, "{} bytes", s.bytes);
        remember(&first);
        assert_eq!(recall("fc_test_first"), Some(first));
    }
}
