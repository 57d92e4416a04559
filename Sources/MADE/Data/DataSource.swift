import Foundation

/// Where a run's data came from and how it was read.
///
/// Checkpoints record it, so that `made eval` and `made sample` find the data the model was
/// trained on without being told; older checkpoints, which lack it, still read.
public struct DataSource: Sendable, Equatable, Codable {
    /// The data path as training was given it, made absolute.
    public var path: String
    /// How it was read: binarization and the validation fraction.
    public var options: DataOptions

    public init(path: String, options: DataOptions) {
        self.path = URL(fileURLWithPath: path).standardizedFileURL.path
        self.options = options
    }
}
