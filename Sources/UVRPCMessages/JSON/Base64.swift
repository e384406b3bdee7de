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
    static func encode(_ data: UnsafeRawBufferPointer, into output: inout [UInt8]) {
        let length = (data.count + 2) / 3 * 4
        guard length > 0 else { return }
        let start = output.count
        output.append(contentsOf: repeatElement(0, count: length))
        alphabet.withUnsafeBufferPointer { alphabet in
            output.withUnsafeMutableBufferPointer { all in
                // Safe: `length` bytes were just appended at `start`, and 4 are written per 3 read.
                var out = start, index = 0
                func emit(_ bits: UInt32, _ count: Int) {
                    all[out] = alphabet[Int(bits >> 18 & 63)]
                    all[out + 1] = alphabet[Int(bits >> 12 & 63)]
                    all[out + 2] = count > 1 ? alphabet[Int(bits >> 6 & 63)] : 0x3D
                    all[out + 3] = count > 2 ? alphabet[Int(bits & 63)] : 0x3D
                    out += 4
                }
                while index + 3 <= data.count {
                    emit(UInt32(data[index]) << 16 | UInt32(data[index + 1]) << 8 | UInt32(data[index + 2]), 3)
                    index += 3
                }
                switch data.count - index {
                case 1: emit(UInt32(data[index]) << 16, 1)
                case 2: emit(UInt32(data[index]) << 16 | UInt32(data[index + 1]) << 8, 2)
                default: break
                }
            }
        }
    }

    /// How many bytes `text` decodes to, or nil when no padding explains its length.
    static func decodedCount(_ text: UnsafeRawBufferPointer) -> Int? {
        var end = text.count
        var padding = 0
        while end > 0, text[end - 1] == 0x3D, padding < 2 { end -= 1; padding += 1 }
        if padding > 0, text.count % 4 != 0 { return nil }
        if end % 4 == 1 { return nil }
        return end / 4 * 3 + max(end % 4 - 1, 0)
    }

    /// Decodes `text` into `output` (exactly ``decodedCount(_:)`` bytes); false
    /// when a byte is outside the alphabet.
    static func decode(_ text: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Bool {
        var end = text.count, padding = 0
        while end > 0, text[end - 1] == 0x3D, padding < 2 { end -= 1; padding += 1 } // as decodedCount counts
        return values.withUnsafeBufferPointer { values in
            var bits: UInt32 = 0, held = 0, out = 0
            for index in 0..<end {
                let value = values[Int(text[index])]
                if value == 0xFF { return false }
                bits = bits << 6 | UInt32(value)
                held += 1
                if held == 4 {
                    output[out] = UInt8(truncatingIfNeeded: bits >> 16)
                    output[out + 1] = UInt8(truncatingIfNeeded: bits >> 8)
                    output[out + 2] = UInt8(truncatingIfNeeded: bits)
                    out += 3
                    bits = 0; held = 0
                }
            }
            if held == 2 { output[out] = UInt8(truncatingIfNeeded: bits >> 4) }
            if held == 3 {
                output[out] = UInt8(truncatingIfNeeded: bits >> 10)
                output[out + 1] = UInt8(truncatingIfNeeded: bits >> 2)
            }
            return true
        }
    }
}
