//! Entitlement: what the shaper owes each tenant, by weighted water-filling.
//!
//! Active tenants get their guarantee plus a share of the capacity the others leave, in
//! proportion to their weights, each capped at its ceiling; an idle tenant is owed its
//! guarantee (it is there the moment it sends), which the others may use meanwhile. A
//! demand smaller than the rates is expressed by capping both at it (see
//! [`Demand::capped`]). One computation serves the control plane's reports
//! (`netd status`, `/metrics`) and the multi-thread [`super::split::Splitter`].

/// A tenant as the entitlement computation sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    pub guaranteed: u64,
    pub ceiling: u64,
    pub weight: u32,
    pub active: bool,
}

/// Return each tenant's entitlement in bit/s (see the module docs).
pub fn entitlement(capacity: u64, tenants: &[Demand]) -> Vec<u64> {
    // Water-filling in u128: active tenants start at their guarantee; the spare is shared
    // by weight among those under their ceiling, round after round, until it is gone or
    // everyone is capped. Each round caps at least one tenant or hands out all the spare,
    // so there are at most n+1 rounds.
    let mut give: Vec<u128> = tenants
        .iter()
        .map(|t| u128::from(t.guaranteed.min(t.ceiling)))
        .collect();
    let used: u128 = tenants
        .iter()
        .zip(&give)
        .filter(|(t, _)| t.active)
        .map(|(_, g)| *g)
        .sum();
    let mut spare = u128::from(capacity).saturating_sub(used);
    loop {
        let hungry: Vec<usize> = (0..tenants.len())
            .filter(|&i| tenants[i].active && give[i] < u128::from(tenants[i].ceiling))
            .collect();
        let total_weight: u128 = hungry
            .iter()
            .map(|&i| u128::from(tenants[i].weight.max(1)))
            .sum();
        if hungry.is_empty() || spare == 0 {
            break;
        }
        let mut handed = 0;
        for &i in &hungry {
            let share = spare * u128::from(tenants[i].weight.max(1)) / total_weight;
            let add = share.min(u128::from(tenants[i].ceiling) - give[i]);
            give[i] += add;
            handed += add;
        }
        spare -= handed;
        if handed == 0 {
            break; // rounding dust
        }
    }
    give.into_iter()
        .map(|g| u64::try_from(g).unwrap_or(u64::MAX))
        .collect()
}

impl Demand {
    /// The same tenant wanting at most `bits_per_sec`: both rates capped at it, active
    /// when it wants anything.
    pub fn capped(self, bits_per_sec: u64) -> Demand {
        Demand {
            guaranteed: self.guaranteed.min(bits_per_sec),
            ceiling: self.ceiling.min(bits_per_sec),
            active: bits_per_sec > 0,
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1_000_000;

    fn demand(g: u64, c: u64, weight: u32, active: bool) -> Demand {
        Demand {
            guaranteed: g * M,
            ceiling: c * M,
            weight,
            active,
        }
    }

    #[test]
    fn all_busy_get_their_guarantee_plus_weighted_spare() {
        let e = entitlement(
            1000 * M,
            &[
                demand(300, 1000, 2, true),
                demand(100, 1000, 1, true),
                demand(100, 1000, 1, true),
            ],
        );
        // Spare 500 split 2:1:1.
        assert_eq!(e, [550 * M, 225 * M, 225 * M]);
    }

    #[test]
    fn idle_tenants_lend_and_are_owed_their_guarantee() {
        let e = entitlement(
            300 * M,
            &[
                demand(150, 300, 2, true),
                demand(90, 300, 1, true),
                demand(60, 300, 1, false),
            ],
        );
        assert_eq!(e, [190 * M, 110 * M, 60 * M]);
    }

    #[test]
    fn ceilings_cap_and_the_rest_flows_to_others() {
        let e = entitlement(
            1000 * M,
            &[demand(100, 200, 10, true), demand(100, 1000, 1, true)],
        );
        assert_eq!(e, [200 * M, 800 * M]);
        assert_eq!(entitlement(1000 * M, &[]), Vec::<u64>::new());
        assert_eq!(
            entitlement(1000 * M, &[demand(100, 200, 1, false)]),
            [100 * M]
        );
    }

    #[test]
    fn a_capped_demand_takes_what_it_wants_and_leaves_the_rest() {
        let e = entitlement(
            1000 * M,
            &[
                demand(300, 1000, 1, true).capped(10 * M),
                demand(100, 400, 2, true),
                demand(100, 1000, 1, true).capped(0),
            ],
        );
        assert_eq!(e, [10 * M, 400 * M, 0]);
    }
}
