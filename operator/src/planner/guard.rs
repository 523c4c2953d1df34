//! The island guard: which mode a node may be told to run next without the
//! fleet (counting every node's desired and applied mode) holding both
//! `LibP2pOnly` and `IrohOnly`.
//!
//! Moving node n to mode d is allowed iff d can talk to n's own applied mode
//! (n is never asked to jump straight across) and to every desired or
//! applied mode of every other node. A target the guard refuses is
//! approached through the dual mode next to it, which can talk to anything;
//! a node already in a dual mode waits there. This one rule yields the safe
//! order in both directions: forward, nobody goes IrohOnly while a
//! LibP2pOnly node remains; backward, IrohOnly nodes go dual before anyone
//! returns to LibP2pOnly.

use switchyard_crds::NetworkMode;

fn idx(mode: NetworkMode) -> usize {
    match mode {
        NetworkMode::LibP2pOnly => 0,
        NetworkMode::DualPreferLibP2p => 1,
        NetworkMode::DualLoadBalance => 2,
        NetworkMode::DualPreferIroh => 3,
        NetworkMode::IrohOnly => 4,
    }
}

/// How many (node, desired-or-applied) entries hold each mode.
#[derive(Debug, Clone, Default)]
pub struct ModeBag {
    counts: [u32; 5],
}

impl ModeBag {
    /// Count one node's modes; a node whose desired equals its applied mode
    /// counts once.
    pub fn add_node(&mut self, desired: NetworkMode, applied: Option<NetworkMode>) {
        self.counts[idx(desired)] += 1;
        if let Some(a) = applied.filter(|a| *a != desired) {
            self.counts[idx(a)] += 1;
        }
    }

    fn remove_node(&mut self, desired: NetworkMode, applied: Option<NetworkMode>) {
        self.counts[idx(desired)] -= 1;
        if let Some(a) = applied.filter(|a| *a != desired) {
            self.counts[idx(a)] -= 1;
        }
    }

    /// Whether some node other than the one described holds `mode`.
    fn others_hold(
        &self,
        mode: NetworkMode,
        desired: NetworkMode,
        applied: Option<NetworkMode>,
    ) -> bool {
        let own = u32::from(desired == mode)
            + u32::from(applied.is_some_and(|a| a == mode && a != desired));
        self.counts[idx(mode)] > own
    }

    /// Whether the bag holds both single-stack modes.
    pub fn has_island(&self) -> bool {
        self.counts[idx(NetworkMode::LibP2pOnly)] > 0 && self.counts[idx(NetworkMode::IrohOnly)] > 0
    }

    /// Whether a node currently desired `desired` and running `applied`
    /// may be told to run `next`.
    pub fn allows(
        &self,
        desired: NetworkMode,
        applied: Option<NetworkMode>,
        next: NetworkMode,
    ) -> bool {
        if applied.is_some_and(|a| !a.can_talk(next)) {
            return false;
        }
        let opposite = match next {
            NetworkMode::LibP2pOnly => NetworkMode::IrohOnly,
            NetworkMode::IrohOnly => NetworkMode::LibP2pOnly,
            _ => return true,
        };
        !self.others_hold(opposite, desired, applied)
    }

    /// The mode to tell a node next on its way to `target`, or `None` when
    /// it is there already or must wait.
    pub fn next_step(
        &self,
        desired: NetworkMode,
        applied: Option<NetworkMode>,
        target: NetworkMode,
    ) -> Option<NetworkMode> {
        if desired == target {
            return None;
        }
        if self.allows(desired, applied, target) {
            return Some(target);
        }
        if desired.is_dual() {
            return None;
        }
        let stone = NetworkMode::dual_toward(target);
        self.allows(desired, applied, stone).then_some(stone)
    }

    /// Record that a node's desired mode changed.
    pub fn apply(
        &mut self,
        old_desired: NetworkMode,
        applied: Option<NetworkMode>,
        new_desired: NetworkMode,
    ) {
        self.remove_node(old_desired, applied);
        self.add_node(new_desired, applied);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use NetworkMode::*;

    fn bag(nodes: &[(NetworkMode, NetworkMode)]) -> ModeBag {
        let mut b = ModeBag::default();
        for (d, a) in nodes {
            b.add_node(*d, Some(*a));
        }
        b
    }

    #[test]
    fn iroh_only_waits_while_any_node_is_libp2p_only() {
        let b = bag(&[(DualPreferIroh, DualPreferIroh), (LibP2pOnly, LibP2pOnly)]);
        assert_eq!(
            b.next_step(DualPreferIroh, Some(DualPreferIroh), IrohOnly),
            None
        );
        let b = bag(&[
            (DualPreferIroh, DualPreferIroh),
            (DualPreferLibP2p, LibP2pOnly),
        ]);
        assert_eq!(
            b.next_step(DualPreferIroh, Some(DualPreferIroh), IrohOnly),
            None,
            "applied modes count too"
        );
        let b = bag(&[
            (DualPreferIroh, DualPreferIroh),
            (DualPreferLibP2p, DualPreferLibP2p),
        ]);
        assert_eq!(
            b.next_step(DualPreferIroh, Some(DualPreferIroh), IrohOnly),
            Some(IrohOnly)
        );
    }

    #[test]
    fn rollback_goes_through_dual_first() {
        let b = bag(&[(IrohOnly, IrohOnly), (IrohOnly, IrohOnly)]);
        assert_eq!(
            b.next_step(IrohOnly, Some(IrohOnly), LibP2pOnly),
            Some(DualPreferLibP2p)
        );
    }

    #[test]
    fn a_node_never_jumps_straight_across() {
        let b = bag(&[(LibP2pOnly, LibP2pOnly)]);
        assert_eq!(
            b.next_step(LibP2pOnly, Some(LibP2pOnly), IrohOnly),
            Some(DualPreferIroh)
        );
    }

    #[test]
    fn a_newcomer_in_the_wrong_single_mode_is_healed_without_a_new_island() {
        // Fleet at IrohOnly, newcomer registered LibP2pOnly: it may go dual
        // (talks to both), and nobody else may leave IrohOnly for LibP2pOnly.
        let b = bag(&[(IrohOnly, IrohOnly), (LibP2pOnly, LibP2pOnly)]);
        assert!(b.has_island());
        assert_eq!(
            b.next_step(LibP2pOnly, Some(LibP2pOnly), IrohOnly),
            Some(DualPreferIroh)
        );
    }
}
