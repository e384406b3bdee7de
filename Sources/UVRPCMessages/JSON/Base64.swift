/// Standard base64 (RFC 4648, `+` and `/`, with `=` padding), the form
/// efro.message stores bytes in, written and read straight from bytes.
enum Base64 {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    /// Each byte's 6-bit value; 0xFF for a byte outside the alphabet.
    private static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, byte) in alphabet.enumerated() { table[Int(byte)] = UInt8(index) }
        return table
    }()

    /// Appends the base64 text of `data` to `output`.
    static func encode<Bytes: Collection>(_ data: Bytes, into output: inout [UInt8]) where Bytes.Element == UInt8 {
        output.reserveCapacity(output.count + (data.count + 2) / 3 * 4)
        alphabet.withUnsafeBufferPointer { alphabet in
            var iterator = data.makeIterator()
            while let first = iterator.next() {
                let second = iterator.next(), third = iterator.next()
                let bits = UInt32(first) << 16 | UInt32(second ?? 0) << 8 | UInt32(third ?? 0)
                output.append(alphabet[Int(bits >> 18 & 63)])
                output.append(alphabet[Int(bits >> 12 & 63)])
                output.append(second == nil ? 0x3D : alphabet[Int(bits >> 6 & 63)])
                output.append(third == nil ? 0x3D : alphabet[Int(bits & 63)])
            }
        }
    }

    /// The bytes `text` encodes, or nil when it is not base64 (a byte outside
    /// the alphabet, padding anywhere but the end, a length that no padding
    /// explains). Missing padding is accepted.
    static func decode(_ text: UnsafeRawBufferPointer) -> [UInt8]? {
        var end = text.count
        var padding = 0
        while end > 0, text[end - 1] == 0x3D, padding < 2 { end -= 1; padding += 1 }
        if padding > 0, text.count % 4 != 0 { return nil }
        if end % 4 == 1 { return nil }
        var output = [UInt8]()
        output.reserveCapacity(end / 4 * 3 + 2)
        let ok: Bool = values.withUnsafeBufferPointer { values in
            var bits: UInt32 = 0
            var held = 0
            for index in 0..<end {
                let value = values[Int(text[index])]
                if value == 0xFF { return false }
                bits = bits << 6 | UInt32(value)
                held += 1
                if held == 4 {
                    output.append(UInt8(truncatingIfNeeded: bits >> 16))
                    output.append(UInt8(truncatingIfNeeded: bits >> 8))
                    output.append(UInt8(truncatingIfNeeded: bits))
                    bits = 0; held = 0
                }
            }
            if held == 2 { output.append(UInt8(truncatingIfNeeded: bits >> 4)) }
            if held == 3 {
                output.append(UInt8(truncatingIfNeeded: bits >> 10))
                output.append(UInt8(truncatingIfNeeded: bits >> 2))
            }
            return true
        }
        return ok ? output : nil
    }
}
