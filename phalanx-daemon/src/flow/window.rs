//! Receive-window events: zero windows and full (or nearly full) windows.

use super::seq;

/// Classifies a window advertisement: `(zero, new_episode)`. A zero-window
/// episode starts with the first zero advertisement after a non-zero one
/// (or the first advertisement seen); repeated zero advertisements (probes
/// answered, window still closed) stay in the same episode.
#[inline]
pub fn zero_window(prev: Option<u16>, win: u16) -> (bool, bool) {
    if win != 0 {
        return (false, false);
    }
    (true, prev != Some(0))
}

/// The shift that applies to a direction's window advertisements: its own
/// window-scale option when both SYNs carried one (RFC 7323 section 2.2), 0
/// when either SYN lacked it, `None` when the handshake was not seen (the
/// scale is then unknown and window-full events are not evaluated).
#[inline]
pub fn shift(own_syn: bool, own_ws: Option<u8>, peer_syn: bool, peer_ws: bool) -> Option<u8> {
    if !(own_syn && peer_syn) {
        return None;
    }
    match own_ws {
        Some(s) if peer_ws => Some(s.min(14)),
        _ => Some(0),
    }
}

/// Bytes of the window `ack + (win << shift)` left after data ending at
/// `snd_end` (0 when it is full or overrun), `None` for a closed window.
#[inline]
pub fn left(ack: u32, win: u16, shift: u8, snd_end: u32) -> Option<u64> {
    let wnd = u64::from(win) << shift;
    (wnd > 0).then(|| wnd.saturating_sub(u64::from(seq::dist(ack, snd_end))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_window_episodes() {
        assert_eq!(zero_window(None, 0), (true, true));
        assert_eq!(zero_window(Some(0), 0), (true, false));
        assert_eq!(zero_window(Some(5), 0), (true, true));
        assert_eq!(zero_window(Some(0), 5), (false, false));
    }

    #[test]
    fn scaling_needs_both_syns() {
        assert_eq!(shift(true, Some(7), true, true), Some(7));
        assert_eq!(shift(true, Some(7), true, false), Some(0));
        assert_eq!(shift(true, Some(20), true, true), Some(14));
        assert_eq!(shift(false, Some(7), true, true), None);
    }

    #[test]
    fn full_window() {
        assert_eq!(left(1000, 10, 2, 1040), Some(0), "full");
        assert_eq!(left(1000, 10, 2, 1039), Some(1));
        assert_eq!(left(1000, 10, 2, 1030), Some(10));
        assert_eq!(left(1000, 10, 2, 1050), Some(0));
        assert_eq!(left(1000, 0, 2, 1000), None);
    }
}
