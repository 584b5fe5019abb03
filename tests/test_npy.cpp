// .npy files: what we write, numpy can read (the pytest side checks that), and what numpy wrote,
// we read (the expected preprocessing fixtures are numpy's own files).

#include "tve/npy.hpp"

#include "test_helpers.hpp"
#include "tve/error.hpp"

namespace tve {
namespace {

TEST(Npy, RoundTripKeepsShapeAndValues) {
  test::TempDir tmp;
  for (const auto& shape : std::vector<std::vector<int64_t>>{{5}, {2, 3}, {1, 4, 4}}) {
    NpyArray array{shape, {}};
    int64_t count = 1;
    for (auto d : shape) count *= d;
    for (int64_t i = 0; i < count; ++i) array.values.push_back(0.25f * static_cast<float>(i) - 1.0f);
    write_npy(tmp / "a.npy", array);
    const NpyArray back = read_npy(tmp / "a.npy");
    EXPECT_EQ(back.shape, shape);
    EXPECT_EQ(back.values, array.values);
    // Header plus data, the header padded to a multiple of 64 bytes as the format requires.
    EXPECT_EQ((std::filesystem::file_size(tmp / "a.npy") - count * 4) % 64, 0u);
  }
}

TEST(Npy, ReadsFilesWrittenByNumpy) {
  const NpyArray array = read_npy(test::image_fixture("expected") / "gray8.png.npy");
  EXPECT_EQ(array.shape, (std::vector<int64_t>{3, 32, 32}));
  // A gray image: the three normalised channels differ only by mean and std.
  const float r = array.values[0] * 0.229f + 0.485f;
  const float g = array.values[32 * 32] * 0.224f + 0.456f;
  EXPECT_NEAR(r, g, 1e-5);
}

TEST(Npy, NoTemporaryFileIsLeftBehind) {
  test::TempDir tmp;
  write_npy(tmp / "map.npy", NpyArray{{2}, {1.0f, 2.0f}});
  int files = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(tmp.path())) ++files;
  EXPECT_EQ(files, 1);
}

TEST(Npy, RefusesOtherFiles) {
  test::expect_error<Error>([] { read_npy(test::image_fixture("rgb8.png")); }, {"rgb8.png", "not a .npy file"});
}

}  // namespace
}  // namespace tve
