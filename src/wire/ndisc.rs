//! Neighbour Discovery options: a checked iterator over the option list of an ND message.
//!
//! Contract: every [`NdiscOption`] that [`NdiscOptions`] yields has a non-zero length that
//! lies within the buffer and has passed `NdiscOption::new_checked`, so none of its getters
//! panics. This matters because smoltcp's `new_checked` alone accepts a zero length field,
//! after which `data()` and `link_layer_addr()` panic (they compute `2..0` and `0 * 8 - 2`);
//! RFC 4861 §4.6 forbids zero-length options, and so does this iterator.

use std::iter::FusedIterator;

use smoltcp::wire::{Error, NdiscOption};

/// Iterate over the options of an ND message (the bytes after its fixed part).
///
/// Yields `Err(Error)` once, then stops, at the first option that is zero-length, overruns
/// the buffer, or is too short for its type.
#[derive(Clone, Debug)]
pub struct NdiscOptions<'a> {
    rest: &'a [u8],
}

impl<'a> NdiscOptions<'a> {
    /// Iterate over the options in `options`.
    pub fn new(options: &'a [u8]) -> NdiscOptions<'a> {
        NdiscOptions { rest: options }
    }

    fn fail(&mut self) -> Option<Result<NdiscOption<&'a [u8]>, Error>> {
        self.rest = &[];
        Some(Err(Error))
    }
}

impl<'a> Iterator for NdiscOptions<'a> {
    type Item = Result<NdiscOption<&'a [u8]>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        // The length field counts units of 8 octets, type and length bytes included.
        let len = match self.rest.get(1) {
            Some(&units) if units != 0 => usize::from(units) * 8,
            _ => return self.fail(),
        };
        let Some((option, rest)) = self.rest.split_at_checked(len) else {
            return self.fail();
        };
        match NdiscOption::new_checked(option) {
            Ok(option) => {
                self.rest = rest;
                Some(Ok(option))
            }
            Err(_) => self.fail(),
        }
    }
}

impl FusedIterator for NdiscOptions<'_> {}

#[cfg(test)]
mod tests {
    use smoltcp::wire::NdiscOptionType;

    use super::*;

    fn collect(bytes: &[u8]) -> Vec<Result<(NdiscOptionType, Vec<u8>), Error>> {
        NdiscOptions::new(bytes)
            .map(|o| o.map(|o| (o.option_type(), o.data().to_vec())))
            .collect()
    }

    #[test]
    fn yields_each_option() {
        let bytes = [
            1, 1, 2, 0, 0, 0, 0, 1, // source link-layer address 02:00:00:00:00:01
            5, 1, 0, 0, 0, 0, 5, 220, // MTU 1500
        ];
        assert_eq!(
            collect(&bytes),
            vec![
                Ok((NdiscOptionType::SourceLinkLayerAddr, vec![2, 0, 0, 0, 0, 1])),
                Ok((NdiscOptionType::Mtu, vec![0, 0, 0, 0, 5, 220])),
            ]
        );
    }

    #[test]
    fn empty_list_yields_nothing() {
        assert!(collect(&[]).is_empty());
    }

    #[test]
    fn zero_length_is_an_error_not_a_panic_or_a_loop() {
        let bytes = [1, 0, 2, 0, 0, 0, 0, 1];
        assert_eq!(collect(&bytes), vec![Err(Error)]);
    }

    #[test]
    fn overrun_and_short_tail_are_errors() {
        assert_eq!(collect(&[1, 2, 2, 0, 0, 0, 0, 1]), vec![Err(Error)]);
        assert_eq!(collect(&[1]), vec![Err(Error)]);
        let mut bytes = vec![1, 1, 2, 0, 0, 0, 0, 1];
        bytes.extend_from_slice(&[2, 1, 2]);
        assert_eq!(collect(&bytes).len(), 2);
        assert_eq!(collect(&bytes)[1], Err(Error));
    }

    #[test]
    fn prefix_information_too_short_for_its_type_is_an_error() {
        // Type 3 (prefix information) needs 32 octets; this claims 8.
        assert_eq!(collect(&[3, 1, 64, 0, 0, 0, 0, 0]), vec![Err(Error)]);
    }

    #[test]
    fn never_panics_on_any_short_input() {
        // Every 0..=3-byte input, and every 8-byte option with each type and length byte.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let _ = collect(&[a]);
                let _ = collect(&[a, b]);
                let _ = collect(&[a, b, 0]);
                let mut opt = [0xaa; 8];
                opt[0] = a;
                opt[1] = b;
                for o in NdiscOptions::new(&opt).flatten() {
                    let _ = (o.data(), o.data_len(), o.link_layer_addr());
                }
            }
        }
    }
}
